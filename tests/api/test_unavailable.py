"""A database outage, for real: a second app reaches the database through a TCP proxy the test stops.

What the API promises (issue #6, point 4): every database access, reads and authentication included,
runs in the retried unit of work; a short blip is retried away; what cannot be retried in time
answers 503 problem+json with ``Retry-After`` and the request id, never a 500, and within the
request's database deadline even when the database stops answering without closing anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from rpa_common.db.engine import create_engine, session_factory
from rpa_common.nats.client import connect
from rpa_common.service import ServiceContext
from tests.conftest import Tenant, make_settings
from tests.tcp_proxy import TcpProxy

# Long enough for a first connection through the proxy on a loaded CI machine, short enough to wait for.
DEADLINE_S = 3.0


@dataclass
class ProxiedAPI:
    proxy: TcpProxy
    client: httpx.AsyncClient


@pytest.fixture
async def proxied(db_url: str) -> AsyncIterator[ProxiedAPI]:
    """The API app on this session's database, but through a proxy; its grant cache starts empty."""
    from rpa_api.app import create_app

    parts = urlsplit(db_url)
    default_port = 5432 if parts.scheme.startswith("postgresql") else 3306
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or default_port)
    await proxy.up()
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    url = urlunsplit(
        (parts.scheme, f"{netloc[0]}@{host}" if len(netloc) == 2 else host, parts.path, parts.query, "")
    )
    # No readiness grace: this app alone loses its database, and must say so at once.
    settings = make_settings(url, db_request_deadline_s=DEADLINE_S, db_connect_timeout_s=1.0, ready_grace_s=0)
    engine = create_engine(settings, "tests", pool_size=2)
    nc = await connect(settings.nats_url, "rpa-tests-proxied")
    ctx = ServiceContext(
        name="tests", settings=settings, engine=engine, sessions=session_factory(engine), nc=nc
    )
    transport = httpx.ASGITransport(app=create_app(ctx=ctx))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        try:
            # Open the pool's first connection before the test starts timing anything.
            assert (await client.get("/readyz")).status_code == 200
            yield ProxiedAPI(proxy, client)
        finally:
            await proxy.close()
            await nc.drain()
            await engine.dispose()


def assert_unavailable(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 503, f"{resp.request.url}: {resp.status_code} {resp.text}"
    assert resp.headers["content-type"].split(";")[0] == "application/problem+json"
    assert int(resp.headers["retry-after"]) >= 1
    body: dict[str, Any] = resp.json()
    assert body["status"] == 503
    assert body["request_id"] == resp.headers["x-request-id"]
    return body


async def test_outage_answers_503_with_retry_after(proxied: ProxiedAPI, tenant: Tenant) -> None:
    api = proxied.client
    # An API key, made while the database answers; its lookup is authentication's first query.
    made = await tenant.client.post("/api/v1/api-keys", json={"name": "outage"}, headers=tenant.headers)
    assert made.status_code == 201, made.text
    key_headers = {"Authorization": f"Bearer {made.json()['key']}"}
    assert (await api.get("/api/v1/robots?limit=50", headers=tenant.headers)).status_code == 200

    await proxied.proxy.down()
    try:
        # The list's own queries fail (the caller's grant is cached by now)...
        assert_unavailable(await api.get("/api/v1/robots?limit=50", headers=tenant.headers))
        assert_unavailable(await api.get("/api/v1/jobs?limit=50", headers=tenant.headers))
        # ...and authentication's: an API key never seen by this app, looked up by its prefix.
        assert_unavailable(await api.get("/api/v1/auth/me", headers=key_headers))
        ready = await api.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"]
    finally:
        await proxied.proxy.up()

    # Back: the pool finds its connections dead (pre-ping) and opens new ones.
    assert (await api.get("/api/v1/robots?limit=50", headers=tenant.headers)).status_code == 200
    me = await api.get("/api/v1/auth/me", headers=key_headers)
    assert me.status_code == 200, me.text
    assert me.json()["user"]["username"] == tenant.admin_username


async def test_authenticated_read_during_outage(proxied: ProxiedAPI, tenant: Tenant) -> None:
    """The caller's grant is not cached yet: resolving the access token is what needs the database."""
    await proxied.proxy.down()
    try:
        assert_unavailable(await proxied.client.get("/api/v1/auth/me", headers=tenant.headers))
    finally:
        await proxied.proxy.up()
    assert (await proxied.client.get("/api/v1/auth/me", headers=tenant.headers)).status_code == 200


async def test_a_blip_is_retried_away(proxied: ProxiedAPI, tenant: Tenant) -> None:
    """A database back within the deadline: the request that met the outage still succeeds."""
    await proxied.proxy.down()

    async def back_soon() -> None:
        await asyncio.sleep(0.3)
        await proxied.proxy.up()

    restore = asyncio.create_task(back_soon())
    resp = await proxied.client.get("/api/v1/robots?limit=50", headers=tenant.headers)
    await restore
    assert resp.status_code == 200, resp.text


async def test_a_silent_database_is_503_within_the_deadline(proxied: ProxiedAPI, tenant: Tenant) -> None:
    """Connections that neither answer nor close: the deadline, not the driver, ends the wait."""
    assert (await proxied.client.get("/api/v1/auth/me", headers=tenant.headers)).status_code == 200
    await proxied.proxy.hang()
    try:
        started = time.monotonic()
        assert_unavailable(await proxied.client.get("/api/v1/robots?limit=50", headers=tenant.headers))
        # The deadline plus scheduling slack, far below what a stuck driver waits (minutes).
        assert time.monotonic() - started < DEADLINE_S + 3.0
    finally:
        await proxied.proxy.down()
        await proxied.proxy.up()
    assert (await proxied.client.get("/api/v1/robots?limit=50", headers=tenant.headers)).status_code == 200
