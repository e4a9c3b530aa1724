"""The coordinator of one terminal server: opens and closes sessions on the scheduler's command.

Identity: the coordinator is a robot with role ``coordinator``. It is configured with that robot's
key (``RPA_COORDINATOR_KEY``) and, being one of our services with database access, resolves its
own robot id at start by looking the key's prefix up in the ``robot`` table and checking the hash
(constant-time). It then listens on ``coordinator_inbox(<its robot id>)``.

Sealed credentials: the coordinator has an X25519 key pair (``rpa_common.sealing``); at start it
registers the public key on the terminal servers it serves, and the scheduler seals each session's
password and robot key to it. The coordinator opens the box in memory, hands the secrets to its
driver, and drops them once the account is logged on (or the session ended).

Session life, reported on ``SESSION_STATE`` (the scheduler stores it, forward only):
``requested`` (written by the scheduler) -> ``connecting`` (client or robot process started) ->
``logged_on`` (the driver saw the log-on: for RDP, the robot inside the session took its key) ->
``robot_connected`` (``ROBOT_STATUS`` Ready/Working for the session's robot, or the database says
it connected after the session opened) -> ``logging_off`` (the coordinator ends the session: close
command, its job ended and the robot did not leave, shutdown) -> ``ended``; or ``failed`` with a
reason: credentials that do not open, spawn error, no log-on within ``session_logon_timeout_s``
(a wrong password: xrdp then shows its own login screen and the client waits), the robot gone
before connecting, session limit reached.

Restart: every session's processes (pids and start times, no secret) are kept in a state file; a
coordinator that starts finds them again: a session whose account logged on is adopted (watched
until it ends), one still logging on is ended (its credentials were only in the old process's
memory), one whose processes are gone is reported ended or failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Robot, TerminalServer
from rpa_common.models.base import utcnow
from rpa_common.models.enums import RobotRole, RobotStatus, SessionState
from rpa_common.nats import subjects
from rpa_common.nats.messages import (
    JobStateChanged,
    OpenSession,
    RobotStatusChanged,
    SessionStateReport,
    decode_coordinator_command,
    session_seal_context,
)
from rpa_common.sealing import SealError, SealKeyPair
from rpa_common.security import key_matches, split_key
from rpa_common.service import ServiceContext
from rpa_coordinator.drivers import EXIT_UNKNOWN, SessionDriver, SessionError, SessionHandle, SessionRequest

log = structlog.get_logger(__name__)

ROBOT_KEY_KIND = "rbk"
COORDINATOR_QUEUE = "coordinator"
SESSION_LIMIT_REACHED = "session limit reached"
SEALED_FOR_ANOTHER_KEY = (
    "the session's credentials do not open with this coordinator's key "
    "(the terminal server's public_key is not this coordinator's)"
)
ENDED_REMEMBERED = 10_000
STATE_FILE_VERSION = 1


class IdentityError(Exception):
    """The configured key is not the key of an active coordinator robot."""


async def resolve_identity(ctx: ServiceContext, key: str) -> tuple[uuid.UUID, uuid.UUID]:
    """(robot id, account id) of the coordinator robot whose key this is."""
    prefix = split_key(key, ROBOT_KEY_KIND)
    if prefix is None:
        raise IdentityError("RPA_COORDINATOR_KEY is not a robot key")
    async with ctx.sessions() as session:
        row = (
            await session.execute(
                sa.select(Robot.id, Robot.account_id, Robot.key_hash, Robot.role, Robot.is_active).where(
                    Robot.key_prefix == prefix
                )
            )
        ).one_or_none()
    if row is None or not key_matches(key, row.key_hash):
        raise IdentityError("RPA_COORDINATOR_KEY is unknown or was rotated")
    if row.role != RobotRole.COORDINATOR or not row.is_active:
        raise IdentityError("the robot of RPA_COORDINATOR_KEY is not an active coordinator")
    return row.id, row.account_id


@dataclass
class LiveSession:
    session_id: uuid.UUID
    account_id: uuid.UUID
    robot_id: uuid.UUID
    opened_at: datetime
    job_id: uuid.UUID | None = None
    state: SessionState = SessionState.REQUESTED
    handle: SessionHandle | None = None
    request: SessionRequest | None = None
    robot_connected: bool = False
    closing: bool = False
    close_reason: str | None = None
    watcher: asyncio.Task[None] | None = None
    logoff_timer: asyncio.Task[None] | None = None

    def record(self) -> dict[str, Any]:
        """What the state file keeps of this session (never a secret)."""
        assert self.handle is not None
        return {
            "session_id": str(self.session_id),
            "account_id": str(self.account_id),
            "robot_id": str(self.robot_id),
            "job_id": str(self.job_id) if self.job_id else None,
            "opened_at": self.opened_at.isoformat(),
            "state": str(self.state),
            "robot_connected": self.robot_connected,
            **self.handle.record(),
        }


class Coordinator:
    """One coordinator's sessions; ``start`` then ``stop`` (which closes every session, unless
    ``keep_sessions_on_stop``: then they stay for the next start to adopt)."""

    def __init__(
        self,
        ctx: ServiceContext,
        robot_id: uuid.UUID,
        driver: SessionDriver,
        *,
        max_sessions: int | None = None,
        gateway_url: str | None = None,
        seal_key: SealKeyPair | None = None,
        state_file: str | Path | None = None,
        logon_timeout_s: float | None = None,
        logoff_grace_s: float | None = None,
        register_key: bool = True,
        keep_sessions_on_stop: bool | None = None,
    ) -> None:
        settings = ctx.settings
        self.ctx = ctx
        self.robot_id = robot_id
        self.driver = driver
        self.max_sessions = max_sessions if max_sessions is not None else settings.coordinator_max_sessions
        self.gateway_url = (
            gateway_url or settings.gateway_public_url or f"ws://127.0.0.1:{settings.gateway_port}/robot/v1"
        )
        self.seal_key = seal_key or SealKeyPair.generate()
        self.state_file = Path(state_file) if state_file else None
        self.logon_timeout_s = (
            logon_timeout_s if logon_timeout_s is not None else settings.session_logon_timeout_s
        )
        self.logoff_grace_s = (
            logoff_grace_s if logoff_grace_s is not None else settings.session_logoff_grace_s
        )
        self.register_key = register_key
        self.keep_sessions_on_stop = (
            keep_sessions_on_stop
            if keep_sessions_on_stop is not None
            else settings.coordinator_keep_sessions_on_stop
        )
        self.sessions: dict[uuid.UUID, LiveSession] = {}
        self.ended: OrderedDict[uuid.UUID, tuple[SessionState, str | None]] = OrderedDict()
        """Sessions that ended lately and how, so that a late OpenSession opens nothing."""
        self._subs: list[Subscription] = []
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def public_key(self) -> str:
        return self.seal_key.public

    async def start(self) -> None:
        await self.driver.start()
        if self.register_key:
            await self.register_public_key()
        await self._adopt()
        nc = self.ctx.nc
        self._subs = [
            await nc.subscribe(
                subjects.coordinator_inbox(self.robot_id), queue=COORDINATOR_QUEUE, cb=self._on_command
            ),
            await nc.subscribe(subjects.ROBOT_STATUS, cb=self._on_robot_status),
            await nc.subscribe(subjects.JOB_STATE, cb=self._on_job_state),
        ]
        log.info(
            "coordinator.started",
            robot_id=str(self.robot_id),
            max_sessions=self.max_sessions,
            driver=self.driver.name,
            public_key=self.public_key,
        )

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        if self.keep_sessions_on_stop:
            for live in list(self.sessions.values()):
                for task in (live.watcher, live.logoff_timer):
                    if task is not None:
                        task.cancel()
            self._save()
            log.info("coordinator.sessions_kept", count=len(self.sessions))
        else:
            await asyncio.gather(
                *(self.close_session(sid, "coordinator shutting down") for sid in list(self.sessions)),
                return_exceptions=True,
            )
        for task in list(self._tasks):
            task.cancel()
        await self.driver.stop()
        log.info("coordinator.stopped")

    async def register_public_key(self) -> int:
        """Put this coordinator's public key on every terminal server it serves (those whose key differs)."""
        public = self.public_key

        async def work(session: Any) -> int:
            result = await session.execute(
                sa.update(TerminalServer)
                .where(
                    TerminalServer.coordinator_id == self.robot_id,
                    sa.or_(TerminalServer.public_key.is_(None), TerminalServer.public_key != public),
                )
                .values(public_key=public, updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            return int(result.rowcount)

        changed = await run_in_transaction(
            self.ctx.sessions, work, attempts=self.ctx.settings.db_retry_attempts
        )
        if changed:
            log.info("coordinator.public_key_registered", terminal_servers=changed)
        return changed

    # Commands -------------------------------------------------------------------------------------

    async def _on_command(self, msg: Msg) -> None:
        try:
            command = decode_coordinator_command(msg.data)
        except ValueError:
            # Never the payload, nor the validation error.
            log.warning("coordinator.undecodable_command")
            return
        try:
            if isinstance(command, OpenSession):
                await self.open_session(command)
            else:
                await self.close_session(command.session_id, command.reason)
        except Exception as exc:
            log.error("coordinator.command_failed", error_type=type(exc).__name__)

    async def open_session(self, cmd: OpenSession) -> None:
        answer: tuple[SessionState, str | None] | None = None
        async with self._lock:  # the seat count and the spawn decide together
            known = self.sessions.get(cmd.session_id)
            if known is not None:
                answer = (known.state, None)
            elif cmd.session_id in self.ended:
                answer = self.ended[cmd.session_id]
            elif len(self.sessions) >= self.max_sessions:
                answer = (SessionState.FAILED, SESSION_LIMIT_REACHED)
            else:
                live = LiveSession(cmd.session_id, cmd.account_id, cmd.robot_id, utcnow(), job_id=cmd.job_id)
                self.sessions[cmd.session_id] = live
        if answer is not None:
            # A command sent again because our first answer was lost is answered again: a session
            # is never opened twice.
            await self._report(cmd.session_id, cmd.account_id, *answer)
            return
        try:
            secrets = self.seal_key.open_json(cmd.sealed, session_seal_context(cmd.session_id))
        except SealError:
            await self._fail(live, SEALED_FOR_ANOTHER_KEY)
            return
        live.request = SessionRequest(
            session_id=cmd.session_id,
            robot_id=cmd.robot_id,
            login=cmd.login,
            domain=cmd.domain,
            password=secrets.get("password", ""),
            robot_key=secrets.get("robot_key", ""),
            gateway_url=cmd.gateway_url or self.gateway_url,
            server=cmd.server,
        )
        del secrets
        await self._set_state(live, SessionState.CONNECTING)
        try:
            live.handle = await self.driver.open(live.request)
        except SessionError as exc:
            await self._fail(live, str(exc))
            return
        except Exception as exc:
            log.exception("session.open_failed", session_id=str(cmd.session_id))
            await self._fail(live, f"driver error: {type(exc).__name__}")
            return
        self._save()
        live.watcher = asyncio.create_task(self._watch(live), name=f"session-{live.session_id}")

    async def _fail(self, live: LiveSession, reason: str) -> None:
        if live.request is not None:
            live.request.forget_secrets()
        self._forget(live.session_id, SessionState.FAILED, reason)
        await self._report(live.session_id, live.account_id, SessionState.FAILED, reason)

    def _forget(self, session_id: uuid.UUID, state: SessionState, reason: str | None) -> None:
        live = self.sessions.pop(session_id, None)
        if live is not None and live.logoff_timer is not None:
            live.logoff_timer.cancel()
        self.ended[session_id] = (state, reason)
        while len(self.ended) > ENDED_REMEMBERED:
            self.ended.popitem(last=False)
        self._save()

    async def close_session(self, session_id: uuid.UUID, reason: str | None) -> None:
        live = self.sessions.get(session_id)
        if live is None or live.handle is None or live.closing:
            return
        live.closing = True
        live.close_reason = reason
        log.info("session.logging_off", session_id=str(session_id), reason=reason)
        await self._set_state(live, SessionState.LOGGING_OFF, reason)
        await self.driver.close(live.handle)
        if live.watcher is not None:
            with contextlib.suppress(Exception):
                await live.watcher  # reports the end and forgets the session

    async def _watch(self, live: LiveSession) -> None:
        handle = live.handle
        assert handle is not None
        exit_task = asyncio.ensure_future(self.driver.wait(handle))
        failure: str | None = None
        try:
            if not handle.logged_on.is_set():
                logon = asyncio.ensure_future(handle.logged_on.wait())
                await asyncio.wait(
                    {exit_task, logon}, timeout=self.logon_timeout_s, return_when="FIRST_COMPLETED"
                )
                logon.cancel()
            if handle.logged_on.is_set():
                if live.request is not None:
                    live.request.forget_secrets()
                if not live.closing and live.state in (SessionState.REQUESTED, SessionState.CONNECTING):
                    await self._set_state(live, SessionState.LOGGED_ON)
                    if live.robot_connected:  # the robot's status came first
                        await self._set_state(live, SessionState.ROBOT_CONNECTED)
            elif not exit_task.done():
                failure = (
                    f"not logged on within {self.logon_timeout_s:g} s: wrong password, "
                    "or the server did not start the robot"
                )
                live.closing = True
                await self.driver.close(handle)
            try:
                code = await exit_task
            except Exception as exc:
                code = -1
                log.warning("session.wait_failed", session_id=str(live.session_id), error=str(exc))
        finally:
            if live.request is not None:
                live.request.forget_secrets()
        if not live.robot_connected:
            live.robot_connected = await self._robot_connected_since(live)
        normal = code in self.driver.normal_exit_codes or code == EXIT_UNKNOWN
        state: SessionState
        reason: str | None
        if failure is not None:
            state, reason = SessionState.FAILED, failure
        elif not handle.logged_on.is_set() and not live.closing:
            state, reason = SessionState.FAILED, f"{self._who()} exited with code {code} before the log-on"
        elif live.closing:
            state, reason = SessionState.ENDED, live.close_reason
        elif not live.robot_connected and not normal:
            state, reason = SessionState.FAILED, f"robot exited with code {code} before connecting"
        elif not live.robot_connected:
            state, reason = SessionState.FAILED, "the robot ended before connecting to the gateway"
        else:
            state, reason = SessionState.ENDED, (None if normal else f"{self._who()} exited with code {code}")
        cleanup = getattr(self.driver, "cleanup", None)
        if cleanup is not None and state == SessionState.ENDED and self.driver.name == "rdp":
            cleanup(handle)
        self._forget(live.session_id, state, reason)
        await self._report(live.session_id, live.account_id, state, reason)

    def _who(self) -> str:
        return "RDP client" if self.driver.name == "rdp" else "robot"

    # Job ends: a session whose job is over is logged off if its robot does not leave by itself ---

    async def _on_job_state(self, msg: Msg) -> None:
        if not self.sessions:
            return
        try:
            event = JobStateChanged.decode(msg.data)
        except ValueError:
            return
        if not event.to_state.is_final:
            return
        for live in list(self.sessions.values()):
            if live.job_id == event.job_id and not live.closing and live.logoff_timer is None:
                reason = f"job {event.to_state.value.lower()}"
                live.logoff_timer = asyncio.create_task(self._logoff_later(live.session_id, reason))

    async def _logoff_later(self, session_id: uuid.UUID, reason: str) -> None:
        # The robot logs off by itself after its job (--exit-after-job); a hard interrupt, or a
        # robot that hangs, is logged off here after a grace period.
        await asyncio.sleep(self.logoff_grace_s)
        live = self.sessions.get(session_id)
        if live is not None:
            live.logoff_timer = None
            await self.close_session(session_id, reason)

    # Robot connected -------------------------------------------------------------------------------

    async def _on_robot_status(self, msg: Msg) -> None:
        if not self.sessions:
            return
        try:
            event = RobotStatusChanged.decode(msg.data)
        except ValueError:
            return
        if event.status not in (RobotStatus.READY, RobotStatus.WORKING):
            return
        for live in list(self.sessions.values()):
            if live.robot_id == event.robot_id and not live.robot_connected and live.handle is not None:
                live.robot_connected = True
                if live.state == SessionState.LOGGED_ON:
                    await self._set_state(live, SessionState.ROBOT_CONNECTED)

    async def _robot_connected_since(self, live: LiveSession) -> bool:
        """The database's word, when the ROBOT_STATUS message was missed."""
        try:
            async with self.ctx.sessions() as session:
                connected_at = await session.scalar(
                    sa.select(Robot.connected_at).where(Robot.id == live.robot_id)
                )
        except Exception:
            return False
        return connected_at is not None and connected_at >= live.opened_at

    async def _set_state(self, live: LiveSession, state: SessionState, reason: str | None = None) -> None:
        live.state = state
        self._save()
        await self._report(live.session_id, live.account_id, state, reason)

    async def _report(
        self, session_id: uuid.UUID, account_id: uuid.UUID, state: SessionState, reason: str | None = None
    ) -> None:
        log.info("session.state", session_id=str(session_id), state=str(state), reason=reason)
        await self.ctx.publish(
            subjects.SESSION_STATE,
            SessionStateReport(
                session_id=session_id, account_id=account_id, state=state, reason=reason, at=utcnow()
            ).encode(),
        )

    # State file and restart ------------------------------------------------------------------------

    def _save(self) -> None:
        """Write the sessions' processes (no secret) atomically: a crash leaves the old or the new file."""
        if self.state_file is None:
            return
        records = [live.record() for live in self.sessions.values() if live.handle is not None]
        data = json.dumps(
            {"version": STATE_FILE_VERSION, "coordinator": str(self.robot_id), "sessions": records}
        )
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(data)
            os.replace(tmp, self.state_file)
        except OSError as exc:
            log.warning("coordinator.state_file_unwritable", path=str(self.state_file), error=exc.strerror)

    def _load(self) -> list[dict[str, Any]]:
        if self.state_file is None:
            return []
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("coordinator.state_file_unreadable", path=str(self.state_file), error=str(exc))
            return []
        if not isinstance(data, dict) or data.get("coordinator") != str(self.robot_id):
            return []
        sessions = data.get("sessions")
        return [r for r in sessions if isinstance(r, dict)] if isinstance(sessions, list) else []

    async def _adopt(self) -> None:
        """Find the sessions a previous run had: adopt, end, or report them."""
        for record in self._load():
            try:
                session_id = uuid.UUID(record["session_id"])
                account_id = uuid.UUID(record["account_id"])
                robot_id = uuid.UUID(record["robot_id"])
                job_id = uuid.UUID(record["job_id"]) if record.get("job_id") else None
                opened_at = datetime.fromisoformat(record["opened_at"])
                state = SessionState(record["state"])
            except (KeyError, ValueError, TypeError):
                continue
            live = LiveSession(session_id, account_id, robot_id, opened_at, job_id=job_id, state=state)
            live.robot_connected = bool(record.get("robot_connected"))
            handle = self.driver.adopt(record, str(session_id), str(robot_id))
            if handle is None:
                # Its processes are gone: the session ended while nobody watched.
                logged_on = state in (
                    SessionState.LOGGED_ON,
                    SessionState.ROBOT_CONNECTED,
                    SessionState.LOGGING_OFF,
                )
                end: tuple[SessionState, str | None] = (
                    (SessionState.ENDED, "ended while the coordinator was down")
                    if logged_on and (live.robot_connected or await self._robot_connected_since(live))
                    else (SessionState.FAILED, "coordinator restarted: the session's processes are gone")
                )
                self._forget(session_id, *end)
                await self._report(session_id, account_id, *end)
                continue
            live.handle = handle
            self.sessions[session_id] = live
            if not handle.logged_on.is_set() or state == SessionState.LOGGING_OFF:
                # Still logging on: the credentials were in the old process's memory only.
                live.closing = True
                live.close_reason = (
                    "coordinator restarted during the log-on" if not handle.logged_on.is_set() else None
                )
                await self.driver.close(handle)
                end = (
                    (SessionState.FAILED, live.close_reason)
                    if live.close_reason
                    else (SessionState.ENDED, None)
                )
                self._forget(session_id, *end)
                await self._report(session_id, account_id, *end)
                continue
            log.info("session.adopted", session_id=str(session_id), pid=handle.pid, state=str(state))
            live.watcher = asyncio.create_task(self._watch(live), name=f"session-{session_id}")
        self._save()
