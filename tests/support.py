"""Small helpers shared by the suites that run real service and robot processes."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import socket
import sys
import time
import uuid
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 15, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        await asyncio.sleep(0.05)


def robot_argv(gateway_url: str, home: Path, *extra: str) -> list[str]:
    """The reference robot, unattended, with its state and cache under ``home`` and quick reconnects.

    Its key goes in its environment (``RPA_ROBOT_KEY``), never here."""
    return [
        sys.executable,
        "-m",
        "rpa_robot",
        "run",
        "--gateway",
        gateway_url,
        "--unattended",
        "--state-dir",
        str(home / "state"),
        "--cache-dir",
        str(home / "cache"),
        "--max-backoff-s",
        "0.5",
        *extra,
    ]


def package_of(folder: Path) -> tuple[bytes, dict[str, Any]]:
    """A process package made of ``folder`` (its files at the zip's root) and its ``rpa.json``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                zf.write(path, path.name)
    manifest: dict[str, Any] = json.loads((folder / "rpa.json").read_text())
    return buf.getvalue(), manifest


async def add_current_version(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    process_id: uuid.UUID,
    version_id: uuid.UUID,
    version: str,
    data: bytes,
    manifest: dict[str, Any],
    default_input: dict[str, Any] | None = None,
) -> None:
    """Version ``version`` of an existing process with package ``data`` stored, made its current
    version (inside the caller's transaction)."""
    # Imported here: tests/tcp_proxy.py and other small helper processes import this module.
    import sqlalchemy as sa

    from rpa_common.models import Process, ProcessVersion
    from rpa_common.packages import store_package

    session.add(
        ProcessVersion(
            id=version_id,
            account_id=account_id,
            process_id=process_id,
            version=version,
            entry_point=manifest["entry_point"],
            default_input=default_input,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
        )
    )
    await session.flush()
    await store_package(session, version_id, io.BytesIO(data))
    await session.execute(
        sa.update(Process).where(Process.id == process_id).values(current_version_id=version_id)
    )
