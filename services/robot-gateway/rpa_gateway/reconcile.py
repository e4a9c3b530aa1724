"""Healing: the jobs the database gives this gateway's robots against the jobs their connections hold.

NATS is a hint. An offer published into an outage, a ``JOB_STATE`` that never came: either leaves a
robot and the database disagreeing about what the robot holds. Every
``gateway_reconcile_interval_s`` (and on each connection, by ``hello`` re-offering the robot's own
jobs) this replica compares, for all its connected robots at once:

- a job the database gives the robot (Starting/Running/Stopping/Interrupting, this attempt) that
  its connection was never offered: ``job.start`` now (followed by the stop or interrupt the job
  is in). Robots drop command ids they have seen, so a repeat is harmless;
- a job the connection holds that the database has ended, taken back or given to another attempt:
  forgotten, with ``job.interrupt`` ("job ended") so no script outlives its job, and the robot's
  Working/Ready status refreshed.

Leases are not touched here: only a heartbeat renews them, and only for jobs the robot confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.db.uow import run_in_transaction
from rpa_common.models.enums import ACTIVE_JOB_STATES
from rpa_common.nats.messages import JobOffer
from rpa_common.service import ServiceContext
from rpa_gateway import store
from rpa_gateway.connection import Connection, job_interrupt
from rpa_protocol.codes import CLOSE_RESTART

log = structlog.get_logger(__name__)


class Reconciler:
    def __init__(
        self,
        ctx: ServiceContext,
        gateway_id: str,
        connections: dict[uuid.UUID, Connection],
        refresh_status: Callable[[Connection], Awaitable[None]],
    ) -> None:
        self.ctx = ctx
        self.gateway_id = gateway_id
        self.connections = connections
        self._refresh_status = refresh_status
        self._task: asyncio.Task[None] | None = None
        self.resent = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="gateway-reconcile")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.ctx.settings.gateway_reconcile_interval_s)
            try:
                await self.run_once()
            except Exception as exc:  # the next round tries again
                log.warning("reconcile.failed", error=str(exc))

    async def _unlicense_expired(self, live: dict[uuid.UUID, Connection]) -> None:
        """Idle robots whose license expired: Unlicensed, and their connection closed so that the
        robot's reconnect ``welcome`` tells it why (it keeps getting no work until a seat is free)."""
        changed = await run_in_transaction(
            self.ctx.sessions,
            lambda s: store.unlicense_expired(s, self.gateway_id),
            attempts=self.ctx.settings.db_retry_attempts,
        )
        for robot_id, reason in changed:
            log.info("robot.unlicensed", robot_id=str(robot_id), reason=reason)
            conn = live.get(robot_id)
            if conn is not None:
                await conn.close(CLOSE_RESTART, f"unlicensed: {reason}")

    async def _license_freed(self, live: dict[uuid.UUID, Connection]) -> None:
        """Unlicensed robots that a seat is free for now take it, without restarting: their
        connection is closed so that the reconnect's ``welcome`` no longer says Unlicensed (the seat
        is theirs from this commit; attach checks it again)."""
        licensed = await run_in_transaction(
            self.ctx.sessions,
            lambda s: store.license_freed(s, self.gateway_id),
            attempts=self.ctx.settings.db_retry_attempts,
        )
        for robot_id in licensed:
            log.info("robot.licensed", robot_id=str(robot_id))
            conn = live.get(robot_id)
            if conn is not None:
                await conn.close(CLOSE_RESTART, "licensed: a seat is free")

    def _live(self) -> dict[uuid.UUID, Connection]:
        return {
            robot_id: conn
            for robot_id, conn in self.connections.items()
            if not (conn.closing or conn.logged_off or conn.control)
        }

    async def run_once(self) -> None:
        live = self._live()
        if not live:
            return
        if self.ctx.settings.license_required:
            await self._unlicense_expired(live)
            await self._license_freed(live)

        async def read(session: AsyncSession) -> list[tuple[uuid.UUID, JobOffer]]:
            return await store.jobs_of_gateway(session, self.gateway_id)

        wanted = await run_in_transaction(
            self.ctx.sessions, read, attempts=self.ctx.settings.db_retry_attempts
        )
        in_db: set[tuple[uuid.UUID, uuid.UUID]] = set()
        for robot_id, offer in wanted:
            in_db.add((robot_id, offer.job_id))
            conn = live.get(robot_id)
            if conn is None or conn.closing or conn.active_jobs.get(offer.job_id) == offer.attempt:
                continue
            if offer.job_id in conn.finished:
                continue  # its end was applied after this read: nothing to offer
            log.warning(
                "reconcile.offer_resent",
                robot_id=str(robot_id),
                job_id=str(offer.job_id),
                attempt=offer.attempt,
                state=offer.state.value,
            )
            self.resent += 1
            await conn.offer(offer)
        # Jobs a connection holds that the query did not return: ended, moved, or not committed yet.
        held = [
            (conn, job_id, attempt)
            for robot_id, conn in live.items()
            for job_id, attempt in list(conn.active_jobs.items())
            if (robot_id, job_id) not in in_db
        ]
        if not held:
            return
        owners = await run_in_transaction(
            self.ctx.sessions,
            lambda s: store.job_owners(s, [job_id for _, job_id, _ in held]),
            attempts=self.ctx.settings.db_retry_attempts,
        )
        for conn, job_id, attempt in held:
            owner = owners.get(job_id)
            if owner is None:
                continue  # not committed yet (an offer that outran its transaction): next round
            state, db_attempt, owner_id = owner
            if state in ACTIVE_JOB_STATES and owner_id == conn.robot.id and db_attempt == attempt:
                continue  # still ours: its robot moved gateway in between; the next round sees it
            if conn.active_jobs.get(job_id) != attempt:
                continue  # changed meanwhile
            conn.active_jobs.pop(job_id, None)
            log.warning("reconcile.job_dropped", robot_id=str(conn.robot.id), job_id=str(job_id), state=state)
            # Ended, back to Pending or handed on: whatever the robot still runs of it must stop.
            await conn.send(job_interrupt(job_id, attempt, reason="job ended"))
            await self._refresh_status(conn)
