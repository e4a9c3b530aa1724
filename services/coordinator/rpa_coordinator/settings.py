"""Coordinator settings: the shared ``Settings`` plus what only a coordinator reads."""

from __future__ import annotations

from pydantic import Field

from rpa_common.settings import Settings


class CoordinatorSettings(Settings):
    coordinator_require_key: bool = Field(
        True,
        description=(
            "Refuse to start without RPA_COORDINATOR_KEY. False: start anyway and only answer health "
            "checks (a node that has no terminal server to serve yet)."
        ),
    )
    coordinator_work_dir: str | None = Field(
        None, description="Where session directories (robot state, cache, output) go; default: the temp dir."
    )
