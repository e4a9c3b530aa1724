"""/readyz during an outage of what every replica shares (database, NATS): ready, "degraded", for
``RPA_READY_GRACE_S`` after the dependency's last answer, then not ready; never ready before it
answered once. A real database outage: the app reaches the database through a TCP proxy the test
stops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from rpa_common.db.engine import create_engine, session_factory
from rpa_common.nats.client import connect
from rpa_common.service import ServiceContext
from tests.conftest import make_settings
from tests.tcp_proxy import TcpProxy

GRACE_S = 6.0


@pytest.fixture
async def proxied(db_url: str) -> AsyncIterator[tuple[TcpProxy, httpx.AsyncClient]]:
    from rpa_api.app import create_app

    parts = urlsplit(db_url)
    proxy = TcpProxy(
        parts.hostname or "127.0.0.1", parts.port or (5432 if parts.scheme.startswith("postgresql") else 3306)
    )
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    url = urlunsplit(
        (parts.scheme, f"{netloc[0]}@{host}" if len(netloc) == 2 else host, parts.path, parts.query, "")
    )
    settings = make_settings(url, db_connect_timeout_s=1.0, ready_grace_s=GRACE_S)
    engine = create_engine(settings, "tests", pool_size=2)
    nc = await connect(settings.nats_url, "rpa-tests-ready-grace")
    ctx = ServiceContext(
        name="tests", settings=settings, engine=engine, sessions=session_factory(engine), nc=nc
    )
    transport = httpx.ASGITransport(app=create_app(ctx=ctx))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        try:
            yield proxy, client
        finally:
            await proxy.close()
            await nc.drain()
            await engine.dispose()


async def test_a_database_never_reached_is_not_ready(proxied: tuple[TcpProxy, httpx.AsyncClient]) -> None:
    _, client = proxied  # the proxy is not up: the database never answered this replica
    r = await client.get("/readyz")
    assert r.status_code == 503, r.text
    assert r.json()["checks"]["database"].startswith("error")
    assert r.headers["retry-after"]


async def test_a_shared_outage_is_degraded_for_the_grace_then_not_ready(
    proxied: tuple[TcpProxy, httpx.AsyncClient],
) -> None:
    proxy, client = proxied
    await proxy.up()
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "checks": {"database": "ok", "nats": "ok"}}
    await proxy.down()
    lost = time.monotonic()
    r = await client.get("/readyz")
    assert time.monotonic() - lost < GRACE_S, "the check itself took the whole grace: raise GRACE_S"
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "degraded"
    assert r.json()["checks"]["database"].startswith("degraded: ")
    assert r.json()["checks"]["nats"] == "ok"

    await asyncio.sleep(max(0.0, GRACE_S - (time.monotonic() - lost)) + 0.2)
    r = await client.get("/readyz")
    assert r.status_code == 503, r.text
    assert r.json()["checks"]["database"].startswith("error")

    await proxy.up()  # back: ready at once, and the grace starts over from this answer
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text
