"""The robot's door: how a robot started inside a terminal session gets its key and gateway URL.

The ``rdp`` driver cannot hand the robot anything directly: the robot is started by the terminal
server (the RDP alternate shell, or the account's session start-up), as the account's OS user, with
a command line every local user can read in ``ps``. So the command line carries no secret, only the
path of this door: a Unix socket of the coordinator (mode 0666 in a 0755 directory, so any local
user may knock).

When the coordinator starts the client for a session, it posts the session's robot key and gateway
URL here under the account's OS uid. A robot connects and asks; the kernel tells the door who is
asking (``SO_PEERCRED``: pid, uid, gid, which a process cannot forge), and the door answers only a
process whose uid is the account's, only once (the entry is taken, not read), and only until the
entry expires. Another user that sees the command line learns nothing and cannot redeem anything;
the account's own processes are the session itself. The pid of the process that redeemed is the
robot: the coordinator logs the session off by ending it.

On Windows the same door is a named pipe, with the client's identity taken from
``GetNamedPipeClientProcessId`` and its token's user SID (docs/terminal-servers.md).

Wire format: the robot sends one line ``{"want": "session"}``; the door answers one JSON line,
``{"session_id", "robot_key", "gateway"}`` or ``{"error": "..."}``, and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
MAX_REQUEST = 1024


@dataclass
class Entry:
    session_id: str
    robot_key: str = field(repr=False)
    gateway: str
    expires: float
    on_redeemed: Callable[[int], None]


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket, from the kernel."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


class RobotDoor:
    """One Unix socket per coordinator; at most one waiting entry per OS uid."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._entries: dict[int, Entry] = {}
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o755)  # noqa: S103 - others must reach the socket
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a socket left by a coordinator that was killed
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        # Anyone may knock; SO_PEERCRED decides who gets an answer.
        os.chmod(self.path, 0o666)  # noqa: S103 - SO_PEERCRED is the access check  # nosec B103
        log.info("door.listening", path=str(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._entries.clear()

    def post(
        self,
        uid: int,
        session_id: str,
        robot_key: str,
        gateway: str,
        ttl_s: float,
        on_redeemed: Callable[[int], None],
    ) -> None:
        """Leave the session's key for the robot of OS user ``uid`` (replacing an older entry)."""
        self._entries[uid] = Entry(session_id, robot_key, gateway, time.monotonic() + ttl_s, on_redeemed)

    def withdraw(self, session_id: str) -> None:
        """Take a session's entry back (its session ended or failed before the robot came)."""
        for uid, entry in list(self._entries.items()):
            if entry.session_id == session_id:
                del self._entries[uid]

    def waiting(self, session_id: str) -> bool:
        return any(e.session_id == session_id for e in self._entries.values())

    def _take(self, uid: int) -> Entry | None:
        entry = self._entries.pop(uid, None)
        if entry is None or entry.expires < time.monotonic():
            return None
        return entry

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            pid, uid, _ = peer_credentials(sock)
            try:
                async with asyncio.timeout(5):
                    line = await reader.readline()
            except TimeoutError:
                return
            try:
                request = json.loads(line[:MAX_REQUEST] or b"null")
            except ValueError:
                request = None
            if not isinstance(request, dict) or request.get("want") != "session":
                answer: dict[str, str] = {"error": 'ask with {"want": "session"}'}
            elif (entry := self._take(uid)) is None:
                answer = {"error": "no session is waiting for this OS user"}
                log.warning("door.refused", uid=uid, pid=pid)
            else:
                answer = {
                    "session_id": entry.session_id,
                    "robot_key": entry.robot_key,
                    "gateway": entry.gateway,
                }
                log.info("door.redeemed", session_id=entry.session_id, uid=uid, pid=pid)
                entry.on_redeemed(pid)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
