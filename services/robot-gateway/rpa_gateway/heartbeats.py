"""Heartbeats, batched: at most one write per period for all the robots heard, whatever their rate.

A flush records ``last_heartbeat_at`` and renews the leases of the jobs the robots confirmed
(``store.CONFIRMED_JOB_STATES``). A robot whose row no longer names this gateway while its socket
lives (the sweep marked it Disconnected, or a newer connection took over) is closed, never quietly
turned Ready again: it reconnects and says ``hello``, which registers it properly.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable

import structlog

from rpa_common.db.uow import run_in_transaction
from rpa_common.service import ServiceContext
from rpa_gateway import store
from rpa_gateway.connection import Connection
from rpa_protocol.codes import CLOSE_REPLACED, CLOSE_STALE

log = structlog.get_logger(__name__)


class Heartbeats:
    def __init__(
        self, ctx: ServiceContext, gateway_id: str, connection_of: Callable[[uuid.UUID], Connection | None]
    ) -> None:
        self.ctx = ctx
        self.gateway_id = gateway_id
        self._connection_of = connection_of
        self._heard: set[uuid.UUID] = set()
        self._task: asyncio.Task[None] | None = None

    def heard(self, robot_id: uuid.UUID) -> None:
        self._heard.add(robot_id)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="gateway-heartbeats")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()

    async def _loop(self) -> None:
        period = max(0.2, min(1.0, self.ctx.settings.heartbeat_interval_s))
        while True:
            await asyncio.sleep(period)
            try:
                await self.flush()
            except Exception as exc:
                log.warning("heartbeat.flush_failed", error=str(exc))

    async def flush(self) -> None:
        if not self._heard:
            return
        heard, self._heard = list(self._heard), set()
        try:
            lost = await run_in_transaction(
                self.ctx.sessions,
                lambda s: store.heartbeat(s, self.gateway_id, heard, self.ctx.settings.job_lease_s),
                attempts=self.ctx.settings.db_retry_attempts,
            )
        except Exception:
            self._heard.update(heard)  # heard all the same: the next flush records them
            raise
        for robot_id, connection_id in lost.items():
            conn = self._connection_of(robot_id)
            if conn is None or conn.logged_off or conn.control:
                continue
            if connection_id == conn.connection_id:
                log.info("robot.stale_connection_closed", robot_id=str(robot_id))
                await conn.close(CLOSE_STALE, "the orchestrator marked this robot Disconnected; reconnect")
            else:
                await conn.close(CLOSE_REPLACED, "another connection of this robot took over")
