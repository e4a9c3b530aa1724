"""The coordinator of one terminal server: opens and closes sessions on the scheduler's command.

Identity: the coordinator is a robot with role ``coordinator``. It is configured with that robot's
key (``RPA_COORDINATOR_KEY``) and, being one of our services with database access, resolves its
own robot id at start by looking the key's prefix up in the ``robot`` table and checking the hash
(constant-time). It then listens on ``coordinator_inbox(<its robot id>)``.

Session life, reported on ``SESSION_STATE`` (the scheduler stores it, forward only):
``requested`` (written by the scheduler) -> ``opening`` -> ``open`` -> ``robot_connected`` (this
coordinator saw ``ROBOT_STATUS`` Ready/Working for the session's robot, or the database says the
robot connected after the session opened) -> ``closed`` when the robot process ends; or ``failed``
with a reason: spawn error, exit code != 0 before the robot connected, session limit reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from rpa_common.models import Robot
from rpa_common.models.base import utcnow
from rpa_common.models.enums import RobotRole, RobotStatus, SessionState
from rpa_common.nats import subjects
from rpa_common.nats.messages import (
    OpenSession,
    RobotStatusChanged,
    SessionStateReport,
    decode_coordinator_command,
)
from rpa_common.security import key_matches, split_key
from rpa_common.service import ServiceContext
from rpa_coordinator.drivers import SessionDriver, SessionError, SessionHandle

log = structlog.get_logger(__name__)

ROBOT_KEY_KIND = "rbk"
COORDINATOR_QUEUE = "coordinator"
SESSION_LIMIT_REACHED = "session limit reached"
ENDED_REMEMBERED = 10_000


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
    handle: SessionHandle | None = None
    robot_connected: bool = False
    closing: bool = False
    watcher: asyncio.Task[None] | None = None


class Coordinator:
    """One coordinator's sessions; ``start`` then ``stop`` (which closes every session)."""

    def __init__(
        self,
        ctx: ServiceContext,
        robot_id: uuid.UUID,
        driver: SessionDriver,
        *,
        max_sessions: int | None = None,
        gateway_url: str | None = None,
    ) -> None:
        settings = ctx.settings
        self.ctx = ctx
        self.robot_id = robot_id
        self.driver = driver
        self.max_sessions = max_sessions if max_sessions is not None else settings.coordinator_max_sessions
        self.gateway_url = (
            gateway_url or settings.gateway_public_url or f"ws://127.0.0.1:{settings.gateway_port}/robot/v1"
        )
        self.sessions: dict[uuid.UUID, LiveSession] = {}
        self.ended: OrderedDict[uuid.UUID, tuple[SessionState, str | None]] = OrderedDict()
        """Sessions that ended lately and how, so that a late OpenSession opens nothing."""
        self._subs: list[Subscription] = []
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        nc = self.ctx.nc
        self._subs = [
            await nc.subscribe(
                subjects.coordinator_inbox(self.robot_id), queue=COORDINATOR_QUEUE, cb=self._on_command
            ),
            await nc.subscribe(subjects.ROBOT_STATUS, cb=self._on_robot_status),
        ]
        log.info("coordinator.started", robot_id=str(self.robot_id), max_sessions=self.max_sessions)

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        await asyncio.gather(
            *(self.close_session(sid, "coordinator shutting down") for sid in list(self.sessions)),
            return_exceptions=True,
        )
        log.info("coordinator.stopped")

    # Commands -------------------------------------------------------------------------------------

    async def _on_command(self, msg: Msg) -> None:
        try:
            command = decode_coordinator_command(msg.data)
        except ValueError:
            # Never the payload, nor the validation error: it may quote a password.
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
                answer = (self._state_of(known), None)
            elif cmd.session_id in self.ended:
                answer = self.ended[cmd.session_id]
            elif len(self.sessions) >= self.max_sessions:
                answer = (SessionState.FAILED, SESSION_LIMIT_REACHED)
            else:
                live = LiveSession(cmd.session_id, cmd.account_id, cmd.robot_id, utcnow())
                self.sessions[cmd.session_id] = live
        if answer is not None:
            # A command sent again because our first answer was lost is answered again: a session
            # is never opened twice.
            await self._report(cmd.session_id, cmd.account_id, *answer)
            return
        await self._report(live.session_id, live.account_id, SessionState.OPENING)
        try:
            live.handle = await self.driver.open(cmd, cmd.gateway_url or self.gateway_url)
        except SessionError as exc:
            self._forget(cmd.session_id, SessionState.FAILED, str(exc))
            await self._report(live.session_id, live.account_id, SessionState.FAILED, str(exc))
            return
        except Exception as exc:
            log.exception("session.open_failed", session_id=str(cmd.session_id))
            self._forget(cmd.session_id, SessionState.FAILED, f"driver error: {exc}")
            await self._report(live.session_id, live.account_id, SessionState.FAILED, f"driver error: {exc}")
            return
        await self._report(live.session_id, live.account_id, SessionState.OPEN)
        live.watcher = asyncio.create_task(self._watch(live), name=f"session-{live.session_id}")

    @staticmethod
    def _state_of(live: LiveSession) -> SessionState:
        if live.robot_connected:
            return SessionState.ROBOT_CONNECTED
        return SessionState.OPEN if live.handle is not None else SessionState.OPENING

    def _forget(self, session_id: uuid.UUID, state: SessionState, reason: str | None) -> None:
        self.sessions.pop(session_id, None)
        self.ended[session_id] = (state, reason)
        while len(self.ended) > ENDED_REMEMBERED:
            self.ended.popitem(last=False)

    async def close_session(self, session_id: uuid.UUID, reason: str | None) -> None:
        live = self.sessions.get(session_id)
        if live is None or live.handle is None or live.closing:
            return
        live.closing = True
        log.info("session.closing", session_id=str(session_id), reason=reason)
        await self.driver.close(live.handle)
        if live.watcher is not None:
            with contextlib.suppress(Exception):
                await live.watcher  # reports closed and forgets the session

    async def _watch(self, live: LiveSession) -> None:
        assert live.handle is not None
        try:
            code = await self.driver.wait(live.handle)
        except Exception as exc:
            code = -1
            log.warning("session.wait_failed", session_id=str(live.session_id), error=str(exc))
        if not live.robot_connected:
            live.robot_connected = await self._robot_connected_since(live)
        if live.closing or code == 0 or live.robot_connected:
            state, reason = SessionState.CLOSED, (None if code == 0 else f"robot exited with code {code}")
        else:
            state, reason = SessionState.FAILED, f"robot exited with code {code} before connecting"
        self._forget(live.session_id, state, reason)
        await self._report(live.session_id, live.account_id, state, reason)

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
                await self._report(live.session_id, live.account_id, SessionState.ROBOT_CONNECTED)

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
