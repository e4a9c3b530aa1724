"""Accounts over HTTP: the caller's own, and new accounts made by the installation's administrators."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import sqlalchemy as sa

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Account, AuditRecord, User
from rpa_common.security import issue_access_token
from tests.conftest import PASSWORD, Tenant

PROBLEM = "application/problem+json"


def assert_problem(resp: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = resp.json()
    assert body["status"] == status
    if field is not None:
        assert field in [e["field"] for e in body.get("errors", [])], body
    return body


async def installation_admin(tenant: Tenant) -> dict[str, str]:
    """Headers of a (new) Administrator of the account named ``default``."""
    from rpa_api.bootstrap import bootstrap

    username = f"root-{uuid.uuid4().hex[:10]}"
    account, _ = await run_in_transaction(
        tenant.ctx.sessions, lambda s: bootstrap(s, "default", username, PASSWORD)
    )
    async with tenant.ctx.sessions() as session:
        user = (await session.execute(sa.select(User).where(User.username == username))).scalar_one()
    token = issue_access_token(tenant.ctx.settings, user_id=user.id, account_id=account.id, token_version=0)
    return {"Authorization": f"Bearer {token}"}


async def account_count(tenant: Tenant, name: str) -> int:
    async with tenant.ctx.sessions() as session:
        return int(
            (
                await session.execute(
                    sa.select(sa.func.count()).select_from(Account).where(Account.name == name)
                )
            ).scalar_one()
        )


async def test_current_account(client: httpx.AsyncClient, tenant: Tenant) -> None:
    resp = await client.get("/api/v1/accounts/current", headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == str(tenant.account_id) and resp.json()["name"] == tenant.account_name

    resp = await client.patch(
        "/api/v1/accounts/current", json={"description": "Production"}, headers=tenant.headers
    )
    assert resp.status_code == 200, resp.text
    assert (await client.get("/api/v1/accounts/current", headers=tenant.headers)).json()[
        "description"
    ] == "Production"
    assert_problem(
        await client.patch("/api/v1/accounts/current", json={"name": "renamed"}, headers=tenant.headers),
        422,
        "name",
    )
    assert_problem(
        await client.patch("/api/v1/accounts/current", json={"description": 3}, headers=tenant.headers),
        422,
        "description",
    )
    _, _, viewer = await tenant.user("Viewer")
    assert_problem(await client.get("/api/v1/accounts/current", headers=viewer), 403)
    assert_problem(
        await client.patch("/api/v1/accounts/current", json={"description": "x"}, headers=viewer), 403
    )
    async with tenant.ctx.sessions() as session:
        audited = (
            await session.execute(
                sa.select(AuditRecord.changes).where(
                    AuditRecord.account_id == tenant.account_id, AuditRecord.object_type == "account"
                )
            )
        ).scalar_one()
    assert audited == {"description": "Production"}


async def test_create_account(client: httpx.AsyncClient, tenant: Tenant) -> None:
    root = await installation_admin(tenant)
    name = f"prod-{uuid.uuid4().hex[:8]}"
    admin = f"padmin-{uuid.uuid4().hex[:8]}"
    body = {
        "name": name,
        "description": "Production",
        "admin": {"username": admin, "password": "first password!"},
    }
    resp = await client.post("/api/v1/accounts", json=body, headers=root)
    assert resp.status_code == 201, resp.text
    created = resp.json()
    assert created["name"] == name and created["admin"]["username"] == admin
    assert "password" not in resp.text

    # The new account's admin logs in, works in the new account, and has its built-in roles.
    token = await client.post("/api/v1/auth/token", data={"username": admin, "password": "first password!"})
    assert token.status_code == 200, token.text
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    me = (await client.get("/api/v1/auth/me", headers=headers)).json()
    assert me["account"]["id"] == created["id"] and [r["name"] for r in me["roles"]] == ["Administrator"]
    roles = (await client.get("/api/v1/roles", headers=headers)).json()
    assert sorted(r["name"] for r in roles["items"]) == ["Administrator", "Developer", "Operator", "Viewer"]
    # ... but, not being an Administrator of "default", creates no accounts itself.
    other: dict[str, Any] = {
        **body,
        "name": f"x-{uuid.uuid4().hex[:8]}",
        "admin": {"username": f"y-{uuid.uuid4().hex[:8]}", "password": "long enough!"},
    }
    assert_problem(await client.post("/api/v1/accounts", json=other, headers=headers), 403)
    assert await account_count(tenant, other["name"]) == 0

    # Conflicts name the field and write nothing.
    assert_problem(await client.post("/api/v1/accounts", json=body, headers=root), 409, "name")
    taken: dict[str, Any] = {
        **body,
        "name": f"n-{uuid.uuid4().hex[:8]}",
        "admin": {"username": tenant.admin_username, "password": "long enough!"},
    }
    assert_problem(await client.post("/api/v1/accounts", json=taken, headers=root), 409, "admin.username")
    assert await account_count(tenant, taken["name"]) == 0
    short: dict[str, Any] = {
        **body,
        "name": f"s-{uuid.uuid4().hex[:8]}",
        "admin": {"username": f"z-{uuid.uuid4().hex[:8]}", "password": "short"},
    }
    assert_problem(await client.post("/api/v1/accounts", json=short, headers=root), 422, "admin.password")
    assert_problem(
        await client.post("/api/v1/accounts", json={**body, "name": "has space"}, headers=root), 422, "name"
    )


async def test_only_installation_admins_create_accounts(client: httpx.AsyncClient, tenant: Tenant) -> None:
    name = f"nope-{uuid.uuid4().hex[:8]}"
    body = {"name": name, "admin": {"username": f"a-{uuid.uuid4().hex[:8]}", "password": "long enough!"}}
    # An Administrator of another account: 403, nothing written.
    assert_problem(await client.post("/api/v1/accounts", json=body, headers=tenant.headers), 403)
    assert await account_count(tenant, name) == 0
    # A non-administrator of "default" lacks the permission altogether.
    root = await installation_admin(tenant)
    viewer_name = f"dviewer-{uuid.uuid4().hex[:8]}"
    await client.post(
        "/api/v1/users",
        json={"username": viewer_name, "password": "long enough!", "role_ids": []},
        headers=root,
    )
    token = await client.post(
        "/api/v1/auth/token", data={"username": viewer_name, "password": "long enough!"}
    )
    viewer = {"Authorization": f"Bearer {token.json()['access_token']}"}
    assert_problem(await client.post("/api/v1/accounts", json=body, headers=viewer), 403)
    assert await account_count(tenant, name) == 0
