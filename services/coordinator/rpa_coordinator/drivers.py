"""Session drivers: how a coordinator opens a session for an unattended account and starts its robot.

A driver gets the whole ``OpenSession`` (login, password, robot key) in memory. The ``process``
driver starts the reference robot as a local process of the account's OS user; it does not log on,
so it does not use the account's password (an RDP driver will, to open a real desktop session).
The robot key reaches the child only through its environment (``RPA_ROBOT_KEY``): never its
command line (visible to every user in ``ps``), never a log line.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from rpa_common.nats.messages import OpenSession

log = structlog.get_logger(__name__)


class SessionError(Exception):
    """The session could not be opened; the message is the reason reported to the scheduler."""


@dataclass
class SessionHandle:
    """What a driver keeps about an open session."""

    session_id: str
    robot_id: str
    detail: dict[str, Any] = field(default_factory=dict)


class SessionDriver(abc.ABC):
    """Opens and closes sessions; one instance serves all sessions of a coordinator."""

    @abc.abstractmethod
    async def open(self, session: OpenSession, gateway_url: str) -> SessionHandle:
        """Open the session and start the robot in it; raise ``SessionError`` with a reason."""

    @abc.abstractmethod
    async def close(self, handle: SessionHandle) -> None:
        """Log the session off (stop the robot); idempotent."""

    @abc.abstractmethod
    def is_alive(self, handle: SessionHandle) -> bool:
        """Whether the session (its robot) is still running."""

    @abc.abstractmethod
    async def wait(self, handle: SessionHandle) -> int:
        """Wait until the session ends on its own; its exit code (0 = normal end)."""


def _become(uid: int, gid: int) -> Callable[[], None]:
    """Runs in the child between fork and exec: drop to the account's user (no extra groups)."""

    def demote() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return demote


def robot_command(gateway_url: str, state_dir: str, cache_dir: str) -> list[str]:
    """The reference robot, unattended, leaving after its job. No secret in here, ever."""
    return [
        sys.executable,
        "-m",
        "rpa_robot",
        "run",
        "--gateway",
        gateway_url,
        "--unattended",
        "--exit-after-job",
        "--state-dir",
        state_dir,
        "--cache-dir",
        cache_dir,
    ]


class ProcessDriver(SessionDriver):
    """A "session" is a local robot process running as the account's OS user.

    As root, the child runs as the user named by the account's login when that user exists
    (``pwd.getpwnam``); otherwise (not root, or no such user) it runs as the coordinator's own user,
    with a warning. ``command`` replaces the robot command line (tests, other robot builds); it is
    called with (gateway URL, state dir, cache dir) and must not contain secrets.
    """

    def __init__(
        self,
        work_dir: str | None = None,
        *,
        command: Any = None,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.work_dir = Path(work_dir or os.path.join(tempfile.gettempdir(), "rpa-coordinator"))
        self.command = command or robot_command
        self.stop_timeout_s = stop_timeout_s

    def _account_user(self, login: str) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            log.warning("session.runs_as_coordinator_user", reason="coordinator is not root", login=login)
            return None
        try:
            return pwd.getpwnam(login)
        except KeyError:
            log.warning("session.runs_as_coordinator_user", reason="no such OS user", login=login)
            return None

    async def open(self, session: OpenSession, gateway_url: str) -> SessionHandle:
        user = self._account_user(session.login)
        state_dir = self.work_dir / "sessions" / str(session.session_id)
        cache_dir = self.work_dir / "cache" / (user.pw_name if user else "shared")
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if user is not None:
                for d in (state_dir, cache_dir):
                    os.chown(d, user.pw_uid, user.pw_gid)
        except OSError as exc:
            raise SessionError(f"cannot prepare the session directory: {exc.strerror}") from exc
        env = {k: v for k, v in os.environ.items() if not k.startswith("RPA_")}
        env["RPA_ROBOT_KEY"] = session.robot_key or ""
        env["RPA_SESSION_ID"] = str(session.session_id)
        env["PYTHONUNBUFFERED"] = "1"
        kwargs: dict[str, Any] = {}
        if user is not None:
            env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
            # Not Popen's user=/group=/extra_groups=: uvloop (the services' event loop) refuses
            # them; a preexec_fn works on every loop.
            kwargs.update(preexec_fn=_become(user.pw_uid, user.pw_gid))
        argv = [str(a) for a in self.command(gateway_url, str(state_dir), str(cache_dir))]
        output = state_dir / "robot.log"
        # A tiny local file; opening it is not worth a thread.
        out = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            if user is not None:
                os.chown(output, user.pw_uid, user.pw_gid)
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=str(state_dir),
                start_new_session=True,  # its own process group: close() stops its children too
                **kwargs,
            )
        except (OSError, ValueError) as exc:
            raise SessionError(f"robot process did not start: {exc}") from exc
        finally:
            os.close(out)
        log.info(
            "session.process_started",
            session_id=str(session.session_id),
            pid=proc.pid,
            os_user=user.pw_name if user else None,
        )
        return SessionHandle(
            session_id=str(session.session_id),
            robot_id=str(session.robot_id),
            detail={"process": proc, "state_dir": str(state_dir), "log": str(output)},
        )

    def _proc(self, handle: SessionHandle) -> asyncio.subprocess.Process:
        proc: asyncio.subprocess.Process = handle.detail["process"]
        return proc

    def is_alive(self, handle: SessionHandle) -> bool:
        return self._proc(handle).returncode is None

    async def wait(self, handle: SessionHandle) -> int:
        return await self._proc(handle).wait()

    async def close(self, handle: SessionHandle) -> None:
        proc = self._proc(handle)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(self.stop_timeout_s):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        else:
            # The robot is gone; make sure nothing it started lingers.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def cleanup(self, handle: SessionHandle) -> None:
        """Remove a closed session's directory (its log stays while the session lives)."""
        shutil.rmtree(handle.detail.get("state_dir", ""), ignore_errors=True)
