"""Commands from NATS for the robots this replica holds: offers, stops, interrupts, disconnects,
robot changes (deactivated, deleted, key rotated) and job ends decided elsewhere."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from rpa_common.db.uow import run_in_transaction
from rpa_common.models.enums import JobState
from rpa_common.nats import subjects
from rpa_common.nats.messages import GatewayCommand, JobControl, JobStateChanged, RobotChanged
from rpa_gateway import store
from rpa_gateway.connection import Connection, job_interrupt, job_stop
from rpa_protocol.codes import CLOSE_FORBIDDEN, CLOSE_REPLACED, CLOSE_UNAUTHORIZED

if TYPE_CHECKING:
    from rpa_gateway.hub import Hub

log = structlog.get_logger(__name__)

DEACTIVATED_REASON = "robot deactivated"
JOB_ENDED_REASON = "job ended"


class Commands:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        nc = self.hub.ctx.nc
        self._subs = [
            await nc.subscribe(subjects.gateway_inbox(self.hub.gateway_id), cb=_guard(self._on_command)),
            await nc.subscribe(subjects.JOB_CONTROL, cb=_guard(self._on_job_control)),
            await nc.subscribe(subjects.ROBOT_CHANGED, cb=_guard(self._on_robot_changed)),
            await nc.subscribe(subjects.JOB_STATE, cb=_guard(self._on_job_state)),
        ]

    async def stop(self) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # NATS already gone: nothing to undo
                log.info("nats.unsubscribe_skipped", error=str(exc))

    def _conn(self, robot_id: uuid.UUID) -> Connection | None:
        return self.hub.connections.get(robot_id)  # main connections only: controls take no jobs

    async def _on_command(self, msg: Msg) -> None:
        cmd: GatewayCommand = GatewayCommand.decode(msg.data)
        conn = self._conn(cmd.robot_id)
        if conn is None:
            return  # not (or no longer) here: the robot gets its jobs when it connects
        if cmd.kind == "disconnect":
            await conn.close(CLOSE_REPLACED, "disconnected by the orchestrator")
        elif cmd.kind == "offer" and cmd.offer is not None:
            # The dispatcher sent the offer itself, and set the robot Working when it claimed it:
            # no database round trip between the job's assignment and the robot hearing of it.
            if not conn.logged_off and conn.active_jobs.get(cmd.offer.job_id) != cmd.offer.attempt:
                await conn.offer(cmd.offer)
        elif cmd.kind == "offer" and cmd.job_id is not None:
            await self._offer_job(conn, cmd)
        elif cmd.kind in ("stop", "interrupt") and cmd.job_id is not None:
            attempt = cmd.attempt if cmd.attempt is not None else conn.active_jobs.get(cmd.job_id)
            if attempt is not None:
                make = job_stop if cmd.kind == "stop" else job_interrupt
                await conn.send(make(cmd.job_id, attempt))

    async def _offer_job(self, conn: Connection, cmd: GatewayCommand) -> None:
        if conn.logged_off or cmd.job_id is None:
            return  # it is leaving after its one job; the job waits for the robot's next session
        job_id = cmd.job_id
        offer = await run_in_transaction(
            self.hub.ctx.sessions, lambda s: store.offer_for(s, conn.robot.id, job_id, cmd.attempt)
        )
        if offer is None:
            return  # the job moved on (or is not this robot's): nothing to offer
        await conn.offer(offer)
        await self.hub.refresh_status(conn)

    async def _on_job_control(self, msg: Msg) -> None:
        ctl: JobControl = JobControl.decode(msg.data)
        conn = self._conn(ctl.robot_id) if ctl.robot_id else None
        if conn is None:
            return
        make = job_stop if ctl.command == "stop" else job_interrupt
        await conn.send(make(ctl.job_id, ctl.attempt))

    async def _on_robot_changed(self, msg: Msg) -> None:
        change: RobotChanged = RobotChanged.decode(msg.data)
        conn = self._conn(change.robot_id)
        if conn is None or change.change == "activated":
            return
        if change.change == "deactivated":
            # An inactive robot gets no work and is told to stop what it is doing.
            for job_id, attempt in list(conn.active_jobs.items()):
                await conn.send(job_stop(job_id, attempt, reason=DEACTIVATED_REASON))
            await conn.close(CLOSE_FORBIDDEN, DEACTIVATED_REASON)
        else:
            await conn.close(CLOSE_UNAUTHORIZED, f"robot {change.change.replace('_', ' ')}")

    async def _on_job_state(self, msg: Msg) -> None:
        change: JobStateChanged = JobStateChanged.decode(msg.data)
        if change.robot_id is None:
            return
        conn = self._conn(change.robot_id)
        if conn is None or not (change.to_state.is_final or change.to_state == JobState.PENDING):
            return
        attempt = conn.active_jobs.pop(change.job_id, None)
        if attempt is None and change.job_id in conn.finished:
            conn.finished.discard(change.job_id)
            return  # our own report ended it, and the status was refreshed with it
        if attempt is not None:
            # The orchestrator ended the job without the robot (lease sweep, retry): stop the script.
            await conn.send(job_interrupt(change.job_id, attempt, reason=JOB_ENDED_REASON))
        await self.hub.refresh_status(conn)


def _guard(handler: Callable[[Msg], Awaitable[None]]) -> Callable[[Msg], Awaitable[None]]:
    async def run(msg: Msg) -> None:
        try:
            await handler(msg)
        except ValidationError as exc:
            log.warning("nats.bad_message", subject=msg.subject, error=str(exc))
        except Exception:
            log.exception("nats.handler_failed", subject=msg.subject)

    return run
