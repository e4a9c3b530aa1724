"""A NATS connection that reconnects forever and drains on shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
import structlog
from nats.aio.client import Client

from rpa_common import metrics

log = structlog.get_logger(__name__)


async def connect(url: str, name: str, user: str | None = None, password: str | None = None) -> Client:
    """Connect to ``url`` (comma-separated servers) as ``name``; ``user``/``password`` when NATS runs
    with per-service users (``rpa_common.nats.permissions``). The password never goes into the URL,
    so it shows in no log line that names the servers. ``name`` is the client name NATS shows
    (``rpa-api``...); its service part labels the reconnect and disconnect counters."""
    service = name.removeprefix("rpa-")
    disconnects = metrics.NATS_DISCONNECTS.labels(service)
    reconnects = metrics.NATS_RECONNECTS.labels(service)

    async def on_error(exc: Exception) -> None:
        log.warning("nats.error", error=str(exc))

    async def on_disconnect() -> None:
        disconnects.inc()
        log.warning("nats.disconnected")

    async def on_reconnect() -> None:
        reconnects.inc()
        log.info("nats.reconnected")

    return await nats.connect(
        servers=[u.strip() for u in url.split(",") if u.strip()],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        allow_reconnect=True,
        connect_timeout=5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        pending_size=64 * 1024 * 1024,
        user=user,
        password=password,
    )


@asynccontextmanager
async def nats_connection(
    url: str, name: str, user: str | None = None, password: str | None = None
) -> AsyncIterator[Client]:
    """Connected on enter, drained (in-flight handlers finish, buffers flushed) on exit."""
    nc = await connect(url, name, user, password)
    try:
        yield nc
    finally:
        try:
            await nc.drain()
        except Exception as exc:  # a connection already closed has nothing to drain
            log.info("nats.drain_skipped", error=str(exc))
