"""The audit trail: every mutating operation writes its record, logins (also refused ones) are
recorded, the hash chain holds under concurrent writers, and an edited record is named by verify.

The walk over the OpenAPI document takes its calls from ``tests/api/audit_examples.py``: an operation
without an example there fails the test.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import sqlalchemy as sa

from rpa_common.audit import verify_account
from rpa_common.models import AuditRecord
from rpa_common.models.enums import ActorType
from rpa_common.service import ServiceContext
from tests.api.audit_examples import EXAMPLES, SECRET, USER_AGENT, Expect, World
from tests.conftest import PASSWORD, Tenant

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
        or r.kind not in ("api", "auth")
        or r.actor_type not in (ActorType.USER, ActorType.API_KEY)
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
