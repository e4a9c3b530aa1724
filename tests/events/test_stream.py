"""``GET /api/v1/events``: Server-Sent Events from the stream, served by a real uvicorn, read by an
httpx streaming client (issue 13)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn

from rpa_common import events
from rpa_common.db.engine import create_engine, session_factory
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import AccessFolder, EventTicket
from rpa_common.models.base import utcnow
from rpa_common.nats.client import connect as service_connect
from rpa_common.service import ServiceContext
from rpa_common.settings import Settings
from rpa_scheduler.relay import ensure_stream, relay_pass
from tests.conftest import Tenant, make_settings, new_tenant
from tests.events.jetstream import JetStreamServer
from tests.support import free_port


@dataclass
class Stack:
    ctx: ServiceContext
    base: str
    js: JetStreamServer


@pytest.fixture
async def stack(db_url: str) -> AsyncIterator[Stack]:
    from rpa_api.app import create_app

    server = JetStreamServer()
    server.start()
    settings: Settings = make_settings(db_url, nats_url=server.url, events_heartbeat_s=0.5)
    engine = create_engine(settings, "tests")
    nc = await service_connect(settings.nats_url, "rpa-tests-events")
    ctx = ServiceContext(
        name="tests", settings=settings, engine=engine, sessions=session_factory(engine), nc=nc
    )
    await ensure_stream(nc, 3600)
    port = free_port()
    api = uvicorn.Server(
        uvicorn.Config(create_app(ctx=ctx), host="127.0.0.1", port=port, log_level="warning")
    )
    task = asyncio.create_task(api.serve())
    while not api.started:
        await asyncio.sleep(0.02)
    try:
        yield Stack(ctx, f"http://127.0.0.1:{port}", server)
    finally:
        api.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        await nc.close()
        await engine.dispose()
        server.close()


async def _tenant(stack: Stack) -> Tenant:
    client = httpx.AsyncClient(base_url=stack.base)
    return await new_tenant(stack.ctx, client)


async def _emit(
    stack: Stack,
    account_id: uuid.UUID,
    n: int,
    *,
    folder_id: uuid.UUID | None = None,
    kind: str = "job.state",
) -> None:
    """``n`` changes through the outbox and the relay, as the services make them."""

    async def work(session):  # type: ignore[no-untyped-def]
        for i in range(n):
            events.record(
                session,
                kind,
                account_id=account_id,
                object_id=uuid.uuid4(),
                folder_id=folder_id,
                at=utcnow(),
                data={"n": i},
            )

    await run_in_transaction(stack.ctx.sessions, work)
    while True:
        async with stack.ctx.sessions() as session, session.begin():
            if await relay_pass(session, stack.ctx.nc, 500) < 500:
                break


async def _read(
    client: httpx.AsyncClient,
    url: str,
    count: int,
    headers: dict[str, str] | None = None,
    timeout: float = 20,
    opened: asyncio.Event | None = None,
) -> list[dict[str, Any]]:
    """The first ``count`` SSE messages (not comments) of the stream: {id, event, data}. ``opened``
    is set once the stream answered (its consumer exists: what is stored from now on comes)."""
    out: list[dict[str, Any]] = []

    async def go() -> None:
        async with client.stream("GET", url, headers=headers or {}) as r:
            assert r.status_code == 200, await r.aread()
            assert r.headers["content-type"].startswith("text/event-stream")
            current: dict[str, Any] = {}
            async for line in r.aiter_lines():
                if opened is not None:
                    opened.set()
                if line == "":
                    if current:
                        out.append(current)
                        current = {}
                        if len(out) >= count:
                            return
                    continue
                if line.startswith(":"):
                    continue
                key, _, value = line.partition(": ")
                current[key] = json.loads(value) if key == "data" else value

    await asyncio.wait_for(go(), timeout)
    return out


async def test_a_client_that_reconnects_with_last_event_id_misses_nothing(stack: Stack) -> None:
    tenant = await _tenant(stack)
    async with httpx.AsyncClient(base_url=stack.base, timeout=10) as client:
        opened = asyncio.Event()
        reader = asyncio.create_task(_read(client, "/api/v1/events", 3, tenant.headers, opened=opened))
        await asyncio.wait_for(opened.wait(), 20)
        await _emit(stack, tenant.account_id, 3)
        first = await reader
        assert [m["event"] for m in first] == ["job.state"] * 3
        assert [m["data"]["data"]["n"] for m in first] == [0, 1, 2]
        assert [int(m["id"]) for m in first] == [m["data"]["id"] for m in first]
        # Disconnected: changes go on; the client comes back with the last id it saw.
        await _emit(stack, tenant.account_id, 4)
        last = first[-1]["id"]
        again = await _read(client, "/api/v1/events", 4, {**tenant.headers, "Last-Event-ID": last})
        assert [m["data"]["data"]["n"] for m in again] == [0, 1, 2, 3]
        assert int(again[0]["id"]) > int(last)
        # The query form, for clients that cannot set the header, says the same.
        same = await _read(client, f"/api/v1/events?last_event_id={last}", 4, tenant.headers)
        assert [m["id"] for m in same] == [m["id"] for m in again]


async def test_a_caller_sees_its_account_and_its_folders_only(stack: Stack) -> None:
    tenant = await _tenant(stack)
    other = await _tenant(stack)
    mine, hidden = uuid.uuid4(), uuid.uuid4()

    async def folders(session):  # type: ignore[no-untyped-def]
        session.add(AccessFolder(id=mine, account_id=tenant.account_id, name=f"mine-{mine.hex[:6]}"))
        session.add(AccessFolder(id=hidden, account_id=tenant.account_id, name=f"hid-{hidden.hex[:6]}"))

    await run_in_transaction(stack.ctx.sessions, folders)
    viewer = await tenant.folder_user(
        f"jobs-{mine.hex[:6]}", [{"object": "jobs", "action": "read"}], str(mine)
    )
    start = (await stack.ctx.nc.jetstream().stream_info(events.STREAM)).state.last_seq
    await _emit(stack, other.account_id, 1)  # another account
    await _emit(stack, tenant.account_id, 1, folder_id=hidden)
    await _emit(stack, tenant.account_id, 1, folder_id=mine)
    await _emit(stack, tenant.account_id, 1)  # no folder: the whole account's
    await _emit(stack, tenant.account_id, 1, kind="robot.status")  # needs robots:read
    async with httpx.AsyncClient(base_url=stack.base, timeout=10) as client:
        seen = await _read(client, f"/api/v1/events?last_event_id={start}", 2, viewer)
        assert [(m["event"], m["data"]["folder_id"]) for m in seen] == [
            ("job.state", str(mine)),
            ("job.state", None),
        ]
        admin = await _read(
            client, f"/api/v1/events?last_event_id={start}&types=robot.status", 1, tenant.headers
        )
        assert [m["event"] for m in admin] == ["robot.status"]
        assert admin[0]["data"]["account_id"] == str(tenant.account_id)
        bad = await client.get("/api/v1/events?types=job.nope", headers=tenant.headers)
        assert bad.status_code == 400 and "types" in bad.text


async def test_a_ticket_opens_one_stream_once_and_expires(stack: Stack) -> None:
    tenant = await _tenant(stack)
    async with httpx.AsyncClient(base_url=stack.base, timeout=10) as client:
        assert (await client.post("/api/v1/events/ticket")).status_code == 401
        r = await client.post("/api/v1/events/ticket", headers=tenant.headers)
        assert r.status_code == 201, r.text
        ticket = r.json()["ticket"]
        assert tenant.token not in ticket
        opened = asyncio.Event()
        reader = asyncio.create_task(_read(client, f"/api/v1/events?ticket={ticket}", 1, opened=opened))
        await asyncio.wait_for(opened.wait(), 20)
        await _emit(stack, tenant.account_id, 1)
        assert [m["event"] for m in await reader] == ["job.state"]
        used = await client.get(f"/api/v1/events?ticket={ticket}")
        assert used.status_code == 401 and "ticket" in used.json()["detail"]
        late = (await client.post("/api/v1/events/ticket", headers=tenant.headers)).json()["ticket"]

        async def expire(session):  # type: ignore[no-untyped-def]
            await session.execute(
                sa.update(EventTicket).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )

        await run_in_transaction(stack.ctx.sessions, expire)
        expired = await client.get(f"/api/v1/events?ticket={late}")
        assert expired.status_code == 401
        assert (await client.get("/api/v1/events?ticket=made-up")).status_code == 401


async def test_an_id_older_than_the_stream_is_a_reset(stack: Stack) -> None:
    tenant = await _tenant(stack)
    await _emit(stack, tenant.account_id, 2)
    await stack.ctx.nc.jetstream().purge_stream(events.STREAM)
    await _emit(stack, tenant.account_id, 1)
    async with httpx.AsyncClient(base_url=stack.base, timeout=10) as client:
        [reset] = await _read(client, "/api/v1/events", 1, {**tenant.headers, "Last-Event-ID": "1"})
        assert reset["event"] == "reset"
        bad = await client.get("/api/v1/events", headers={**tenant.headers, "Last-Event-ID": "x"})
        assert bad.status_code == 400 and "Last-Event-ID" in bad.text
