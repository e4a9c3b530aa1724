"""Publishing to NATS from the gateway: never silently dropped during an outage.

While NATS is unreachable, nats-py would take a publish without complaint; whether it ever reaches
anyone depends on how the outage ends. So a message published while the client is not connected
(or whose publish failed) is queued here, the outage is logged at warning, and the queue is sent,
in order, once the client is connected again. These messages are hints (the database holds the
truth and every consumer reconciles), so the queue is bounded: past ``MAX_QUEUED`` the oldest go.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import structlog

from rpa_common.nats.messages import Message
from rpa_common.service import ServiceContext

log = structlog.get_logger(__name__)

MAX_QUEUED = 100_000
RETRY_S = 0.2


class Publisher:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._queue: deque[tuple[str, bytes]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._dropped = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._retry_loop(), name="gateway-publisher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._flush()
        if self._queue:
            log.warning("nats.publish_abandoned", count=len(self._queue))

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def publish(self, subject: str, msg: Message) -> None:
        data = msg.encode()
        if not self._queue and self.ctx.nc.is_connected:
            try:
                await self.ctx.nc.publish(subject, data)
                return
            except Exception as exc:
                log.warning("nats.publish_failed", subject=subject, error=str(exc), retrying=True)
        elif not self._queue:
            log.warning("nats.publish_deferred", subject=subject, reason="not connected to NATS")
        # Behind earlier queued messages: keep the order.
        self._queue.append((subject, data))
        if len(self._queue) > MAX_QUEUED:
            self._queue.popleft()
            self._dropped += 1

    async def _flush(self) -> None:
        sent = 0
        while self._queue and self.ctx.nc.is_connected:
            subject, data = self._queue[0]
            try:
                await self.ctx.nc.publish(subject, data)
            except Exception as exc:
                log.warning("nats.publish_failed", subject=subject, error=str(exc), retrying=True)
                return
            self._queue.popleft()
            sent += 1
        if sent:
            log.info("nats.publish_resumed", sent=sent, dropped=self._dropped)
            self._dropped = 0

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(RETRY_S)
            if self._queue:
                await self._flush()
