"""Request and response bodies of licenses."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field

from rpa_api.kit.schemas import In, Out
from rpa_common.licensing import MAX_KEY_CHARS
from rpa_common.models.enums import LicenseKind


class LicenseInstall(In):
    key: str = Field(
        min_length=1,
        max_length=MAX_KEY_CHARS,
        description="The license key as issued: RPA1.<payload>.<signature>",
    )
    name: str | None = Field(None, min_length=1, max_length=100, description='default: "<licensee> <kind>"')


class LicenseOut(Out):
    id: uuid.UUID = Field(description="the license's own id, from its signed document")
    name: str
    licensee: str
    kind: LicenseKind
    capacity: int = Field(description="robots of its kind that may be connected and work at once")
    assigned: int = Field(
        description="robots of the account that need a license of this kind (active robots of the role)"
    )
    in_use: int = Field(
        description="robots holding a seat of this kind now (connected, not Unlicensed); shared by all "
        "unexpired licenses of the kind"
    )
    issued_at: datetime | None
    expires_at: datetime | None
    expired: bool
    created_at: datetime
