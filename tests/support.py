"""Small helpers shared by the suites that run real service and robot processes."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

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
