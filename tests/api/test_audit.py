"""The audit trail: every mutating operation writes its record, logins (also refused ones) are
recorded, the hash chain holds under concurrent writers, and an edited record is named by verify.

The walk over the OpenAPI document takes its calls from ``tests/api/audit_examples.py``: an operation
without an example there fails the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import httpx
import sqlalchemy as sa

from rpa_common.audit import verify_account
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import AuditChain, AuditRecord
from rpa_common.models.audit import GENESIS_HASH
from rpa_common.models.enums import ActorType
from rpa_common.service import ServiceContext
from tests.api.audit_examples import EXAMPLES, SECRET, USER_AGENT, Expect, World
from tests.api.conftest import LiveAPI
from tests.conftest import PASSWORD, ROOT, Tenant

MUTATING = ("post", "put", "patch", "delete")


async def records(ctx: ServiceContext, account_id: uuid.UUID, after_seq: int = 0) -> list[AuditRecord]:
    async with ctx.sessions() as session:
        return list(
            (
                await session.execute(
                    sa.select(AuditRecord)
                    .where(AuditRecord.account_id == account_id, AuditRecord.seq > after_seq)
                    .order_by(AuditRecord.seq)
                )
            ).scalars()
        )


def _check(found: list[AuditRecord], expect: Expect) -> str | None:
    """Why ``found`` lacks the expected record (None when it is there and complete)."""
    want_id = None if expect.object_id is None else str(expect.object_id)
    match = [
        r
        for r in found
        if r.action == expect.action
        and r.object_type == expect.object_type
        and (want_id is None or r.object_id == want_id)
    ]
    if not match:
        seen = [(r.action, r.object_type, r.object_id) for r in found]
        return f"no record ({expect.action}, {expect.object_type}, {want_id}); written: {seen}"
    r = match[0]
    if r.seq is None or r.hash is None or r.prev_hash is None:
        return f"record {r.id} is not chained"
    if (
        r.at is None
        or r.kind not in ("api", "auth", "csv", "webhook")
        # A webhook's caller is no user: the trigger whose secret it proved is the actor.
        or r.actor_type not in (ActorType.USER, ActorType.API_KEY, ActorType.TRIGGER)
    ):
        return f"record {r.id}: time, kind or actor missing: {r.at} {r.kind} {r.actor_type}"
    if r.actor_id is None or not r.actor_name:
        return f"record {r.id} names no user"
    if r.client_address != "127.0.0.1" or r.user_agent != USER_AGENT:
        return f"record {r.id}: client {r.client_address!r}, user agent {r.user_agent!r}"
    for each in found:
        if SECRET in json.dumps(each.changes) or PASSWORD in json.dumps(each.changes):
            return f"record {each.id} ({each.action}) holds a secret: {each.changes}"
    return None


async def test_every_mutating_operation_writes_an_audit_record(
    client: httpx.AsyncClient, tenant: Tenant, ctx: ServiceContext
) -> None:
    doc = (await client.get("/openapi.json")).json()
    operations = {
        op["operationId"]: (method, path)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in MUTATING
    }
    missing = sorted(set(operations) - set(EXAMPLES))
    stale = sorted(set(EXAMPLES) - set(operations))
    failures: list[str] = []
    for op_id, (method, path) in operations.items():
        if op_id not in EXAMPLES:
            continue
        w = World(client, tenant, method, path)
        try:
            expect = await EXAMPLES[op_id](w)
        except AssertionError as exc:
            failures.append(f"{op_id}: the call failed: {exc}")
            continue
        account = expect.account_id or tenant.account_id
        why = _check(await records(ctx, account, w.marks.get(account, 0)), expect)
        if why:
            failures.append(f"{op_id}: {why}")
    assert not missing, f"mutating operations without an example in tests/api/audit_examples.py: {missing}"
    assert not stale, f"examples of operations the API does not have: {stale}"
    assert not failures, "\n".join(failures)
    report = await _verify(ctx, tenant.account_id)
    assert report.ok, report


async def _verify(ctx: ServiceContext, account_id: uuid.UUID) -> Any:
    async with ctx.sessions() as session:
        return await verify_account(session, account_id)


# Logins -------------------------------------------------------------------------------------------


async def test_login_success_and_failure_are_recorded(
    client: httpx.AsyncClient, tenant: Tenant, ctx: ServiceContext
) -> None:
    headers = {"User-Agent": USER_AGENT}
    bad = await client.post(
        "/api/v1/auth/token", data={"username": tenant.admin_username, "password": "wrong!"}, headers=headers
    )
    assert bad.status_code == 401
    good = await client.post(
        "/api/v1/auth/token", data={"username": tenant.admin_username, "password": PASSWORD}, headers=headers
    )
    assert good.status_code == 200
    written = [r for r in await records(ctx, tenant.account_id) if r.kind == "auth"]
    assert [r.action for r in written] == ["login_failed", "login"]
    for r in written:
        assert (r.object_type, r.object_id, r.actor_id) == ("user", str(tenant.admin_id), tenant.admin_id)
        assert (r.client_address, r.user_agent) == ("127.0.0.1", USER_AGENT)
        assert r.seq is not None and r.hash is not None
    # The refused login's record committed although the request was refused; no password in it.
    assert written[0].changes == {"reason": "wrong password"}
    assert "wrong!" not in json.dumps([r.changes for r in written])
    assert (await _verify(ctx, tenant.account_id)).ok


# Listing -------------------------------------------------------------------------------------------


async def test_listing_filters_and_pages_by_cursor(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    h = tenant.headers
    folders = []
    for i in range(5):
        r = await client.post("/api/v1/folders", json={"name": f"f{i}"}, headers=h)
        assert r.status_code == 201
        folders.append(r.json()["id"])
    await client.patch(f"/api/v1/folders/{folders[0]}", json={"description": "x"}, headers=h)
    await client.post("/api/v1/folders", json={"name": "elsewhere"}, headers=other_tenant.headers)

    everything = (await client.get("/api/v1/audit", headers=h)).json()
    items = everything["items"]
    assert everything["next_cursor"] is None
    assert [i["seq"] for i in items] == sorted((i["seq"] for i in items), reverse=True)
    assert {i["object_id"] for i in items if i["object_type"] == "folder"} == set(folders)
    first = items[0]
    assert (first["action"], first["object_id"], first["actor_id"]) == (
        "update",
        folders[0],
        str(tenant.admin_id),
    )
    assert first["prev_hash"] == items[1]["hash"]

    # Pages by cursor: every record once, newest first.
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2, "object_type": "folder"}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await client.get("/api/v1/audit", params=params, headers=h)).json()
        seen += [i["object_id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [folders[0], *reversed(folders)]

    async def ids(**params: Any) -> list[str]:
        r = await client.get("/api/v1/audit", params=params, headers=h)
        assert r.status_code == 200, r.text
        return [i["object_id"] for i in r.json()["items"]]

    assert await ids(action="update") == [folders[0]]
    assert await ids(object_type="folder", object_id=folders[2]) == [folders[2]]
    assert set(await ids(actor_id=str(tenant.admin_id), object_type="folder")) == set(folders)
    assert await ids(actor_id=str(uuid.uuid4())) == []
    assert await ids(kind="auth") == []
    at = [i["at"] for i in items]
    assert set(await ids(at_from=at[2], at_to=at[1], object_type="folder")) <= {folders[4], folders[3]}
    assert await ids(at_from="2999-01-01T00:00:00Z") == []

    bad = await client.get("/api/v1/audit", params={"at_from": at[0], "at_to": at[-1]}, headers=h)
    assert bad.status_code == 422 and {e["field"] for e in bad.json()["errors"]} == {"at_from", "at_to"}
    _, _, developer = await tenant.user("Developer")
    assert (await client.get("/api/v1/audit", headers=developer)).status_code == 403
    assert (await client.get("/api/v1/audit/verify", headers=developer)).status_code == 403
    # No endpoint changes or removes a record.
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert (await client.request(method, "/api/v1/audit", headers=h)).status_code == 405


# Tampering ------------------------------------------------------------------------------------------


def _verify_command(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPA_")}
    env.update(RPA_DB_URL=db_url, RPA_ENVIRONMENT="test")
    return subprocess.run(
        [sys.executable, "-m", "rpa_common.audit", "verify", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_an_edited_record_is_the_first_broken_link(
    client: httpx.AsyncClient, tenant: Tenant, ctx: ServiceContext
) -> None:
    h = tenant.headers
    for name in ("a", "b", "c", "d"):
        assert (await client.post("/api/v1/folders", json={"name": name}, headers=h)).status_code == 201
    ok = (await client.get("/api/v1/audit/verify", headers=h)).json()
    assert ok["ok"] is True and ok["broken"] is None and ok["records"] == ok["head_seq"] >= 4
    done = _verify_command(ctx.settings.db_url or "", "--account", str(tenant.account_id))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"OK      account {tenant.account_id}: {ok['records']} records" in done.stdout

    # Someone with database access rewrites what record 2 says was done.
    written = await records(ctx, tenant.account_id)
    target = written[1]
    async with ctx.sessions() as session, session.begin():
        await session.execute(
            sa.update(AuditRecord)
            .where(AuditRecord.id == target.id)
            .values(changes={"name": "nothing to see"})
        )

    report = (await client.get("/api/v1/audit/verify", headers=h)).json()
    assert report["ok"] is False
    assert report["broken"]["record_id"] == str(target.id) and report["broken"]["seq"] == target.seq
    assert "content does not match its hash" in report["broken"]["problem"]
    assert report["records"] == target.seq - 1

    done = _verify_command(ctx.settings.db_url or "", "--account", str(tenant.account_id))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"first broken link at record {target.id} seq {target.seq}" in done.stdout

    # A record removed from the middle is a gap, named at the record after it.
    async with ctx.sessions() as session, session.begin():
        await session.execute(sa.delete(AuditRecord).where(AuditRecord.id == target.id))
    report = (await client.get("/api/v1/audit/verify", headers=h)).json()
    assert report["broken"]["seq"] == target.seq + 1 and "missing" in report["broken"]["problem"]


# Concurrency ------------------------------------------------------------------------------------


async def test_concurrent_writers_leave_a_chain_that_verifies(
    client: httpx.AsyncClient, tenant: Tenant, ctx: ServiceContext, live_api: LiveAPI
) -> None:
    """Two API replicas (this process's app and a live server) and a third writer through the
    library (as the gateway writes) append to one account at once: no fork, no gap."""
    n = 24
    h = tenant.headers

    async def through_app(i: int) -> None:
        r = await client.post("/api/v1/robot-groups", json={"name": f"app-{i}"}, headers=h)
        assert r.status_code == 201, r.text

    async def through_live(live: httpx.AsyncClient, i: int) -> None:
        r = await live.post("/api/v1/robot-groups", json={"name": f"live-{i}"}, headers=h)
        assert r.status_code == 201, r.text

    async def through_library(i: int) -> None:
        from rpa_common.audit import add_audit_record

        async def work(session: Any) -> None:
            for k in range(2):  # two records of one transaction stay next to each other
                add_audit_record(
                    session,
                    account_id=tenant.account_id,
                    actor_type=ActorType.ROBOT,
                    actor_id=None,
                    actor_name="robot",
                    action="read_credential",
                    object_type="resource",
                    object_id=f"lib-{i}-{k}",
                    kind="robot",
                )

        await run_in_transaction(ctx.sessions, work)

    before = len(await records(ctx, tenant.account_id))
    async with httpx.AsyncClient(base_url=live_api.url, timeout=120) as live:
        await asyncio.gather(
            *(through_app(i) for i in range(n)),
            *(through_live(live, i) for i in range(n)),
            *(through_library(i) for i in range(n)),
        )
    written = await records(ctx, tenant.account_id)
    assert len(written) == before + 4 * n
    assert [r.seq for r in written] == list(range(1, len(written) + 1))
    assert written[0].prev_hash == GENESIS_HASH
    pairs = {}
    for r in written:
        if r.object_id and r.object_id.startswith("lib-"):
            pairs.setdefault(r.object_id.rsplit("-", 1)[0], []).append(r.seq)
    assert all(b == a + 1 for a, b in pairs.values())
    report = await _verify(ctx, tenant.account_id)
    assert report.ok and report.records == len(written), report
    async with ctx.sessions() as session:
        head = await session.get(AuditChain, tenant.account_id)
        assert head is not None and (head.seq, head.hash) == (written[-1].seq, written[-1].hash)


async def test_a_savepoint_rolled_back_takes_its_record_with_it(tenant: Tenant, ctx: ServiceContext) -> None:
    from rpa_common.audit import add_audit_record

    def add(session: Any, name: str) -> None:
        add_audit_record(
            session,
            account_id=tenant.account_id,
            actor_type=ActorType.SYSTEM,
            actor_id=None,
            actor_name=None,
            action="test",
            object_type="thing",
            object_id=name,
        )

    async def work(session: Any) -> None:
        add(session, "kept-1")
        await session.flush()
        try:
            async with session.begin_nested():
                add(session, "dropped")
                await session.flush()
                raise RuntimeError("undo")
        except RuntimeError:
            pass
        add(session, "kept-2")

    await run_in_transaction(ctx.sessions, work)
    written = [r for r in await records(ctx, tenant.account_id) if r.object_type == "thing"]
    assert [r.object_id for r in written] == ["kept-1", "kept-2"]
    assert written[1].seq == written[0].seq + 1
    assert (await _verify(ctx, tenant.account_id)).ok
