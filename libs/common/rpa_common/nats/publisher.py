"""Publishing that says when NATS is away, and tries again when it is back.

The NATS client buffers what is published while it reconnects and writes it out the moment its own
connection is back, before the services that subscribe have reconnected: such messages reach no one,
and nothing says so (issue #6: offers lost that way stalled robots). ``Publisher`` does not hand a
message to a client that is not connected; it logs ``nats.publish_failed`` at warning, keeps the
message, and publishes it again ``retry_after_s`` after the connection is back (time for the other
services to subscribe again), oldest first, until ``max_age_s`` has passed.

None of this makes NATS reliable, and it need not be: every message is a hint whose truth is in the
database, and every consumer reconciles on a timer (the scheduler re-sends unconfirmed offers, the
gateway compares what its robots hold). Retrying only makes the usual outage cost less time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass

import structlog
from nats.aio.client import Client

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Held:
    subject: str
    payload: bytes
    since: float


class Publisher:
    """``publish`` never raises; a message that cannot go out now is logged and retried."""

    def __init__(
        self,
        nc: Client,
        *,
        retry_after_s: float = 0.5,
        max_age_s: float = 30.0,
        max_held: int = 10_000,
    ) -> None:
        self.nc = nc
        self.retry_after_s = retry_after_s
        self.max_age_s = max_age_s
        self._held: deque[_Held] = deque(maxlen=max_held)
        self._retrying: asyncio.Task[None] | None = None
        self.failed = 0
        """Publishes that did not go out at once (for tests and metrics)."""

    @property
    def held(self) -> int:
        return len(self._held)

    async def publish(self, subject: str, payload: bytes) -> bool:
        """True when the message went to the server now; False when it is held for a retry."""
        # Behind held messages, not before them: their order is the order things happened in.
        if not self._held and self.nc.is_connected:
            try:
                await self.nc.publish(subject, payload)
                return True
            except Exception as exc:
                self._hold(subject, payload, str(exc) or type(exc).__name__)
                return False
        self._hold(subject, payload, "not connected")
        return False

    def _hold(self, subject: str, payload: bytes, error: str) -> None:
        self.failed += 1
        if len(self._held) == self._held.maxlen:
            log.warning("nats.publish_dropped", subject=self._held[0].subject, reason="too many held")
        self._held.append(_Held(subject, payload, time.monotonic()))
        log.warning("nats.publish_failed", subject=subject, error=error, held=len(self._held))
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.get_running_loop().create_task(self._retry(), name="nats-publish-retry")

    async def _retry(self) -> None:
        while self._held:
            await asyncio.sleep(self.retry_after_s)
            # Connected for a while, not just now: the others re-subscribe when they reconnect too.
            if not self.nc.is_connected:
                continue
            await asyncio.sleep(self.retry_after_s)
            if self.nc.is_connected:
                await self._send_held()

    async def _send_held(self) -> None:
        sent = expired = 0
        while self._held:
            item = self._held[0]
            if time.monotonic() - item.since > self.max_age_s:
                # Too old to be a useful hint: the database and the sweeps have it covered.
                self._held.popleft()
                expired += 1
                continue
            try:
                await self.nc.publish(item.subject, item.payload)
            except Exception as exc:
                log.warning("nats.publish_failed", subject=item.subject, error=str(exc), held=len(self._held))
                break
            self._held.popleft()
            sent += 1
        if sent or expired:
            log.info("nats.publish_retried", sent=sent, expired=expired, held=len(self._held))

    async def close(self) -> None:
        """Send what is held if NATS answers now, then stop retrying."""
        if self._held and self.nc.is_connected:
            await self._send_held()
        if self._retrying is not None:
            self._retrying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrying
            self._retrying = None
