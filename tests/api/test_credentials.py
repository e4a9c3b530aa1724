"""Credentials through the API: the password is write-only, encrypted at rest, absent from every
response, listing, log and NATS message; reveal needs credentials:reveal and is audited; expiry is
flagged; a ciphertext moved to another credential or account does not decrypt."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import AuditRecord, ResourceValue
from tests.api.test_resources import make_resource, problem_field
from tests.conftest import Tenant

API = "/api/v1"


def secret() -> str:
    return f"S3cret-{uuid.uuid4().hex}"


async def make_credential(
    client: httpx.AsyncClient, tenant: Tenant, password: str, **extra: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    res = await make_resource(client, tenant, "credentials")
    r = await client.put(
        f"{API}/resources/{res['id']}/values",
        json={"scope": "all", "login": "svc-user", "password": password, **extra},
        headers=tenant.headers,
    )
    assert r.status_code == 201, r.text
    return res, r.json()


async def raw_value(ctx: Any, value_id: str) -> Any:
    async def read(session: Any) -> Any:
        return (
            await session.execute(
                sa.select(ResourceValue.__table__).where(ResourceValue.id == uuid.UUID(value_id))
            )
        ).one()

    return await run_in_transaction(ctx.sessions, read)


async def test_password_is_write_only_and_encrypted_at_rest(
    client: httpx.AsyncClient, tenant: Tenant, ctx: Any, caplog: pytest.LogCaptureFixture, capfd: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    password = secret()
    sub = await ctx.nc.subscribe(">")
    seen: list[bytes] = []

    async def drain() -> None:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.2)
            except Exception:
                return
            seen.append(bytes(msg.data))

    try:
        res, value = await make_credential(client, tenant, password)
        assert value["has_password"] is True and value["login"] == "svc-user"
        bodies = [
            (await client.get(f"{API}/resources/{res['id']}", headers=tenant.headers)).text,
            (await client.get(f"{API}/resources/{res['id']}/values", headers=tenant.headers)).text,
            (
                await client.get(f"{API}/resources/{res['id']}/values/{value['id']}", headers=tenant.headers)
            ).text,
            (await client.get(f"{API}/resources", headers=tenant.headers)).text,
            str(value),
        ]
        # A bad request that carries the password: the error names the field, not the password.
        bad = await client.put(
            f"{API}/resources/{res['id']}/values",
            json={"scope": "all", "login": "", "password": password},
            headers=tenant.headers,
        )
        assert bad.status_code == 422 and problem_field(bad) == "login"
        bodies.append(bad.text)
        await asyncio.sleep(0.3)
        await drain()
    finally:
        await sub.unsubscribe()
    for body in bodies:
        assert password not in body
    assert seen, "the change published nothing on NATS"
    assert all(password.encode() not in data for data in seen)
    out, err = capfd.readouterr()
    assert password not in caplog.text and password not in out and password not in err

    row = await raw_value(ctx, value["id"])
    assert row.secret_encrypted and password.encode() not in row.secret_encrypted
    assert password.encode() not in row.data_key_wrapped and row.master_key_id
    assert len(row.secret_nonce) == 12
    assert row.text_value is None and row.login == "svc-user"


async def test_reveal_needs_its_permission_and_is_audited(
    client: httpx.AsyncClient, tenant: Tenant, ctx: Any
) -> None:
    password = secret()
    res, value = await make_credential(client, tenant, password)
    url = f"{API}/resources/{res['id']}/values/{value['id']}/reveal"
    _, _, developer = await tenant.user("Developer")
    denied = await client.post(url, headers=developer)
    assert denied.status_code == 403 and "credentials:reveal" in denied.text
    shown = await client.post(url, headers=tenant.headers)
    assert shown.status_code == 200, shown.text
    assert shown.json()["password"] == password and shown.json()["login"] == "svc-user"
    assert shown.headers["cache-control"] == "no-store"

    async def audit(session: Any) -> list[Any]:
        rows = await session.execute(
            sa.select(AuditRecord).where(
                AuditRecord.account_id == tenant.account_id,
                AuditRecord.object_id == res["id"],
                AuditRecord.action == "reveal",
            )
        )
        return list(rows.scalars())

    records = await run_in_transaction(ctx.sessions, audit)
    assert len(records) == 1 and records[0].actor_id == tenant.admin_id
    assert password not in str(records[0].changes)

    # Every audit record of the credential: none holds the password.
    async def all_records(session: Any) -> list[str]:
        rows = await session.execute(
            sa.select(AuditRecord.changes).where(AuditRecord.account_id == tenant.account_id)
        )
        return [str(r[0]) for r in rows]

    assert all(password not in c for c in await run_in_transaction(ctx.sessions, all_records))
    text = await make_resource(client, tenant, "text")
    tv = await client.put(
        f"{API}/resources/{text['id']}/values", json={"scope": "all", "text": "x"}, headers=tenant.headers
    )
    r = await client.post(
        f"{API}/resources/{text['id']}/values/{tv.json()['id']}/reveal", headers=tenant.headers
    )
    assert r.status_code == 409


async def test_replace_keeps_the_password_and_expiry_is_flagged(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    password = secret()
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    res, value = await make_credential(client, tenant, password, expires_at=past)
    assert value["expired"] is True
    url = f"{API}/resources/{res['id']}/values"
    assert [
        v["id"] for v in (await client.get(url, params={"expired": "true"}, headers=tenant.headers)).json()
    ] == [value["id"]]
    assert (await client.get(url, params={"expired": "false"}, headers=tenant.headers)).json() == []
    future = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    r = await client.put(
        url, json={"scope": "all", "login": "other", "expires_at": future}, headers=tenant.headers
    )
    assert r.status_code == 200 and r.json()["expired"] is False and r.json()["login"] == "other"
    shown = await client.post(f"{url}/{value['id']}/reveal", headers=tenant.headers)
    assert shown.json()["password"] == password
    naive = await client.put(
        url, json={"scope": "all", "login": "x", "expires_at": "2030-01-01T00:00:00"}, headers=tenant.headers
    )
    assert naive.status_code == 422 and problem_field(naive) == "expires_at"
    # A new value without a password is refused, naming the field.
    res2 = await make_resource(client, tenant, "credentials")
    r = await client.put(
        f"{API}/resources/{res2['id']}/values", json={"scope": "all", "login": "x"}, headers=tenant.headers
    )
    assert r.status_code == 422 and problem_field(r) == "password"


async def test_a_ciphertext_moved_to_another_credential_or_account_does_not_decrypt(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant, ctx: Any
) -> None:
    password = secret()
    _, source = await make_credential(client, tenant, password)
    target_res, target = await make_credential(client, tenant, "something else")
    foreign_res, foreign = await make_credential(client, other_tenant, "foreign")
    row = await raw_value(ctx, source["id"])

    async def copy(session: Any, to: str) -> None:
        await session.execute(
            sa.update(ResourceValue)
            .where(ResourceValue.id == uuid.UUID(to))
            .values(
                secret_encrypted=row.secret_encrypted,
                secret_nonce=row.secret_nonce,
                data_key_wrapped=row.data_key_wrapped,
                master_key_id=row.master_key_id,
            )
        )

    await run_in_transaction(ctx.sessions, lambda s: copy(s, target["id"]))
    await run_in_transaction(ctx.sessions, lambda s: copy(s, foreign["id"]))
    r = await client.post(
        f"{API}/resources/{target_res['id']}/values/{target['id']}/reveal", headers=tenant.headers
    )
    assert r.status_code == 503 and password not in r.text
    r = await client.post(
        f"{API}/resources/{foreign_res['id']}/values/{foreign['id']}/reveal", headers=other_tenant.headers
    )
    assert r.status_code == 503 and password not in r.text
    # The source still reads.
    r = await client.post(
        f"{API}/resources/{source['resource_id']}/values/{source['id']}/reveal", headers=tenant.headers
    )
    assert r.json()["password"] == password
