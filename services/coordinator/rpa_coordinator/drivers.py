"""Session drivers: how a coordinator opens a session for an unattended account and starts its robot.

A driver gets a ``SessionRequest``: the ``OpenSession`` command with its sealed credentials opened
(in memory only: the password and the robot key are never written, logged or put on a command line).

- ``process``: the reference robot as a local process of the account's OS user; no log-on (the
  password is not used). The robot key reaches the child through its environment.
- ``rdp``: a real RDP session with FreeRDP's ``xfreerdp``; the password goes to the client on
  its standard input (``/from-stdin:force``), the server's certificate is pinned by fingerprint
  (``/cert:fingerprint:...``, or ``/cert:ignore`` only where the terminal server says so), and the
  robot starts in the session (``/shell:`` with the robot's command, or the account's own session
  start-up). The robot gets its key from the coordinator's door (``rpa_coordinator.door``).

A handle's ``logged_on`` event is set when the account is known to be logged on: for ``rdp``, when
the robot started inside the session redeemed its key at the door (so the password was right and
the server ran the robot); for ``process``, once the robot process runs.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import pwd
import shlex
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from rpa_common.models.enums import ShellMode
from rpa_common.nats.messages import RdpTarget
from rpa_coordinator.door import RobotDoor

log = structlog.get_logger(__name__)

EXIT_UNKNOWN = -2
"""``wait``'s answer for an adopted process: it was not our child, so its exit code is unknown."""


class SessionError(Exception):
    """The session could not be opened; the message is the reason reported to the scheduler."""


@dataclass
class SessionRequest:
    """What a driver needs to open one session. ``password`` and ``robot_key`` live only here."""

    session_id: uuid.UUID
    robot_id: uuid.UUID
    login: str
    domain: str | None
    password: str = field(repr=False)
    robot_key: str = field(repr=False)
    gateway_url: str
    server: RdpTarget | None = None

    def forget_secrets(self) -> None:
        """Drop the credentials once the session no longer needs them (logged on, or ended)."""
        self.password = ""
        self.robot_key = ""


def proc_start_time(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), None when it is gone.

    A pid and its start time name one process: a pid reused after a restart does not match."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):
        return None  # a zombie has ended (an init that does not reap must not keep a session alive)
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def same_process(pid: int | None, start: int | None) -> bool:
    return pid is not None and start is not None and proc_start_time(pid) == start


@dataclass
class SessionHandle:
    """What a driver keeps about an open session.

    ``pid``/``pid_start``: the process whose end is the session's end (the robot for ``process``,
    the RDP client for ``rdp``); ``robot_pid``/``robot_start``: the robot inside an RDP session,
    as the door saw it. These (no secret) go into the coordinator's state file, so a restarted
    coordinator can find the session again."""

    session_id: str
    robot_id: str
    driver: str = "process"
    pid: int | None = None
    pid_start: int | None = None
    robot_pid: int | None = None
    robot_start: int | None = None
    logged_on: asyncio.Event = field(default_factory=asyncio.Event)
    adopted: bool = False
    detail: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {
            "driver": self.driver,
            "pid": self.pid,
            "pid_start": self.pid_start,
            "robot_pid": self.robot_pid,
            "robot_start": self.robot_start,
        }


class SessionDriver(abc.ABC):
    """Opens and closes sessions; one instance serves all sessions of a coordinator."""

    name = "driver"
    normal_exit_codes: frozenset[int] = frozenset({0})
    """Exit codes of ``wait`` that mean the session ended normally (log-off)."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Called once when the coordinator starts (a driver may open its own resources)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Called once when the coordinator stops."""

    @abc.abstractmethod
    async def open(self, request: SessionRequest) -> SessionHandle:
        """Open the session and start the robot in it; raise ``SessionError`` with a reason."""

    @abc.abstractmethod
    async def close(self, handle: SessionHandle) -> None:
        """Log the session off (stop the robot); idempotent."""

    def is_alive(self, handle: SessionHandle) -> bool:
        """Whether the session (its process) is still running."""
        proc = handle.detail.get("process")
        if proc is not None:
            return bool(proc.returncode is None)
        return same_process(handle.pid, handle.pid_start)

    async def wait(self, handle: SessionHandle) -> int:
        """Wait until the session ends on its own; its exit code (``EXIT_UNKNOWN`` if adopted)."""
        proc = handle.detail.get("process")
        if proc is not None:
            code: int = await proc.wait()
            return code
        while same_process(handle.pid, handle.pid_start):  # noqa: ASYNC110 - polling another process
            await asyncio.sleep(0.5)
        return EXIT_UNKNOWN

    def adopt(self, record: dict[str, Any], session_id: str, robot_id: str) -> SessionHandle | None:
        """The handle of a session a previous run of the coordinator opened, if its process lives."""
        pid, start = record.get("pid"), record.get("pid_start")
        if not same_process(pid, start):
            return None
        handle = SessionHandle(
            session_id=session_id,
            robot_id=robot_id,
            driver=self.name,
            pid=pid,
            pid_start=start,
            robot_pid=record.get("robot_pid"),
            robot_start=record.get("robot_start"),
            adopted=True,
        )
        if handle.robot_pid is not None:
            handle.logged_on.set()
        return handle


async def _stop_process(pid: int, start: int | None, timeout_s: float, *, group: bool = False) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``, to one process we know by pid and start time."""

    def send(sig: int) -> None:
        if start is not None and proc_start_time(pid) != start:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    send(signal.SIGTERM)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while proc_start_time(pid) is not None and (start is None or proc_start_time(pid) == start):
        if asyncio.get_running_loop().time() > deadline:
            send(signal.SIGKILL)
            break
        await asyncio.sleep(0.1)


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

    name = "process"

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

    async def open(self, request: SessionRequest) -> SessionHandle:
        user = self._account_user(request.login)
        state_dir = self.work_dir / "sessions" / str(request.session_id)
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
        env["RPA_ROBOT_KEY"] = request.robot_key
        env["RPA_SESSION_ID"] = str(request.session_id)
        env["PYTHONUNBUFFERED"] = "1"
        kwargs: dict[str, Any] = {}
        if user is not None:
            env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
            # Not Popen's user=/group=/extra_groups=: uvloop (the services' event loop) refuses
            # them; a preexec_fn works on every loop.
            kwargs.update(preexec_fn=_become(user.pw_uid, user.pw_gid))
        argv = [str(a) for a in self.command(request.gateway_url, str(state_dir), str(cache_dir))]
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
            session_id=str(request.session_id),
            pid=proc.pid,
            os_user=user.pw_name if user else None,
        )
        handle = SessionHandle(
            session_id=str(request.session_id),
            robot_id=str(request.robot_id),
            driver=self.name,
            pid=proc.pid,
            pid_start=proc_start_time(proc.pid),
            robot_pid=proc.pid,
            detail={"process": proc, "state_dir": str(state_dir), "log": str(output)},
        )
        handle.robot_start = handle.pid_start
        handle.logged_on.set()  # no log-on here: the robot runs
        return handle

    async def close(self, handle: SessionHandle) -> None:
        proc: asyncio.subprocess.Process | None = handle.detail.get("process")
        if proc is None:  # adopted after a restart: not our child
            if handle.pid is not None:
                await _stop_process(handle.pid, handle.pid_start, self.stop_timeout_s, group=True)
            return
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


RDP_LOGOFF = 12
"""xfreerdp's exit code when the session's program ended (ERRINFO_LOGOFF_BY_USER)."""

DEFAULT_ROBOT_SHELL = "rpa-robot run --unattended --exit-after-job"
"""The robot's command in the session when the terminal server names none; the driver appends
``--door <socket>``. No secret: the robot asks the door for its key."""


class RdpDriver(SessionDriver):
    """A real RDP session opened with FreeRDP's ``xfreerdp`` (needs an X display: ``display``).

    The account's OS user must exist on this machine (the coordinator runs on its terminal server):
    the door answers the robot of that uid only. The client's ``HOME`` is a private directory per
    session, removed at the end: no certificate is ever trusted on first use from a stored
    ``known_hosts``; only the pinned fingerprint (or the explicit opt-out) decides.
    """

    name = "rdp"
    normal_exit_codes = frozenset({0, RDP_LOGOFF})

    def __init__(
        self,
        work_dir: str | None,
        door: RobotDoor,
        *,
        client: str = "xfreerdp",
        display: str | None = None,
        robot_shell: str = DEFAULT_ROBOT_SHELL,
        logon_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.work_dir = Path(work_dir or os.path.join(tempfile.gettempdir(), "rpa-coordinator"))
        self.door = door
        self.client = client
        self.display = display
        self.robot_shell = robot_shell
        self.logon_timeout_s = logon_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.extra_args = extra_args

    async def start(self) -> None:
        await self.door.start()

    async def stop(self) -> None:
        await self.door.stop()

    def client_argv(self, request: SessionRequest) -> list[str]:
        """The client's command line: no password, no key (they go to stdin and the door)."""
        target = request.server
        if target is None:
            raise SessionError("the terminal server's RDP settings are missing from the command")
        argv = [
            self.client,
            f"/v:{target.host}:{target.port}",
            f"/u:{request.login}",
            "/from-stdin:force",  # the password on stdin; without :force the client waits
            "/sec:tls",
            "/log-level:WARN",
            "-clipboard",
            "/audio-mode:2",  # no sound redirection
        ]
        if request.domain:
            argv.append(f"/d:{request.domain}")
        if target.cert_fingerprint:
            fingerprint = target.cert_fingerprint.strip()
            if not fingerprint.lower().startswith(("sha1:", "sha256:", "sha384:", "sha512:")):
                fingerprint = f"sha256:{fingerprint}"
            argv.append(f"/cert:deny,fingerprint:{fingerprint.lower()}")
        elif target.cert_ignore:
            argv.append("/cert:ignore")
        else:
            raise SessionError(
                "the terminal server has no certificate fingerprint to pin "
                "(set cert_fingerprint, or cert_ignore for a test server)"
            )
        if target.shell_mode == ShellMode.COMMAND:
            command = (target.shell_command or self.robot_shell).strip()
            argv.append(f"/shell:{command} --door {shlex.quote(str(self.door.path))}")
        argv.extend(self.extra_args)
        return argv

    async def open(self, request: SessionRequest) -> SessionHandle:
        try:
            user = pwd.getpwnam(request.login)
        except KeyError:
            raise SessionError(f"no OS user {request.login!r} on this terminal server") from None
        argv = self.client_argv(request)
        if shutil.which(self.client) is None:
            raise SessionError(f"the RDP client {self.client!r} is not installed")
        session_dir = self.work_dir / "rdp" / str(request.session_id)
        home = session_dir / "home"
        try:
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise SessionError(f"cannot prepare the session directory: {exc.strerror}") from exc
        env = {k: v for k, v in os.environ.items() if not k.startswith("RPA_")}
        env["HOME"] = str(home)
        if self.display:
            env["DISPLAY"] = self.display
        if not env.get("DISPLAY"):
            raise SessionError("the RDP client needs an X display (RPA_COORDINATOR_DISPLAY)")
        handle = SessionHandle(
            session_id=str(request.session_id), robot_id=str(request.robot_id), driver=self.name
        )

        def redeemed(pid: int) -> None:
            handle.robot_pid = pid
            handle.robot_start = proc_start_time(pid)
            handle.logged_on.set()

        self.door.post(
            user.pw_uid,
            str(request.session_id),
            request.robot_key,
            request.gateway_url,
            self.logon_timeout_s,
            redeemed,
        )
        output = session_dir / "client.log"
        out = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=str(session_dir),
                start_new_session=True,
            )
        except OSError as exc:
            self.door.withdraw(str(request.session_id))
            raise SessionError(f"the RDP client did not start: {exc.strerror}") from exc
        finally:
            os.close(out)
        assert proc.stdin is not None
        try:
            proc.stdin.write(request.password.encode() + b"\n")
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client died at once: wait() reports its code
        finally:
            proc.stdin.close()
        handle.pid = proc.pid
        handle.pid_start = proc_start_time(proc.pid)
        handle.detail = {"process": proc, "session_dir": str(session_dir), "log": str(output)}
        log.info(
            "session.rdp_client_started", session_id=handle.session_id, pid=proc.pid, login=request.login
        )
        return handle

    async def close(self, handle: SessionHandle) -> None:
        """Log off: end the robot inside the session (the session ends with it, the client exits
        with code 12); if it does not, or it never started, end the client."""
        self.door.withdraw(handle.session_id)
        if handle.robot_pid is not None and same_process(handle.robot_pid, handle.robot_start):
            await _stop_process(handle.robot_pid, handle.robot_start, self.stop_timeout_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.stop_timeout_s):
                    while self.is_alive(handle):  # noqa: ASYNC110 - polling another process
                        await asyncio.sleep(0.1)
        if self.is_alive(handle) and handle.pid is not None:
            if handle.robot_pid is not None:
                log.warning(
                    "session.client_killed",
                    session_id=handle.session_id,
                    detail="the session did not end with its robot: it may stay disconnected",
                )
            await _stop_process(handle.pid, handle.pid_start, self.stop_timeout_s)
            proc = handle.detail.get("process")
            if proc is not None:
                await proc.wait()

    def cleanup(self, handle: SessionHandle) -> None:
        """Remove the client's private home and log of an ended session."""
        shutil.rmtree(handle.detail.get("session_dir", ""), ignore_errors=True)
