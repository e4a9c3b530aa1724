"""Users and roles over HTTP: CRUD, what each built-in role may and may not do, the last
Administrator, no privilege escalation, other accounts' ids, problem+json errors, no half-writes."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from rpa_common.models import Role, User
from rpa_common.models.enums import PermissionAction, PermissionObject
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


async def role_ids(client: httpx.AsyncClient, tenant: Tenant) -> dict[str, str]:
    resp = await client.get("/api/v1/roles", params={"builtin": "true"}, headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    return {r["name"]: r["id"] for r in resp.json()["items"]}


async def login(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/api/v1/auth/token", data={"username": username, "password": password})


async def count_users(tenant: Tenant, username: str) -> int:
    async with tenant.ctx.sessions() as session:
        return int(
            (
                await session.execute(
                    sa.select(sa.func.count()).select_from(User).where(User.username == username)
                )
            ).scalar_one()
        )


# Users ---------------------------------------------------------------------------------------------


async def test_user_crud(client: httpx.AsyncClient, tenant: Tenant) -> None:
    roles = await role_ids(client, tenant)
    username = f"ann-{uuid.uuid4().hex[:8]}"
    resp = await client.post(
        "/api/v1/users",
        json={
            "username": username,
            "password": "a long enough password",
            "display_name": "Ann",
            "email": "ann@example.com",
            "role_ids": [roles["Operator"]],
        },
        headers=tenant.headers,
    )
    assert resp.status_code == 201, resp.text
    user = resp.json()
    assert user["username"] == username and user["display_name"] == "Ann"
    assert [r["name"] for r in user["roles"]] == ["Operator"]
    assert "password" not in resp.text and "hash" not in resp.text

    # The new user logs in with that password.
    assert (await login(client, username, "a long enough password")).status_code == 200

    got = await client.get(f"/api/v1/users/{user['id']}", headers=tenant.headers)
    assert got.json()["email"] == "ann@example.com"
    listing = await client.get(
        "/api/v1/users", params={"username": "ann-", "limit": 1, "sort": "username"}, headers=tenant.headers
    )
    assert listing.status_code == 200
    assert listing.json()["total"] == 1 and listing.json()["limit"] == 1
    by_role = await client.get("/api/v1/users", params={"role_id": roles["Operator"]}, headers=tenant.headers)
    assert [u["id"] for u in by_role.json()["items"]] == [user["id"]]
    assert_problem(
        await client.get("/api/v1/users", params={"sort": "password_hash"}, headers=tenant.headers),
        422,
        "sort",
    )

    resp = await client.patch(
        f"/api/v1/users/{user['id']}", json={"display_name": "Ann B.", "email": None}, headers=tenant.headers
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["display_name"] == "Ann B." and resp.json()["email"] is None

    resp = await client.put(
        f"/api/v1/users/{user['id']}/roles",
        json={"role_ids": [roles["Viewer"], roles["Developer"]]},
        headers=tenant.headers,
    )
    assert sorted(r["name"] for r in resp.json()["roles"]) == ["Developer", "Viewer"]

    assert (await client.delete(f"/api/v1/users/{user['id']}", headers=tenant.headers)).status_code == 204
    assert_problem(await client.get(f"/api/v1/users/{user['id']}", headers=tenant.headers), 404)
    assert_problem(await login(client, username, "a long enough password"), 401)


async def test_user_validation_and_conflicts_write_nothing(client: httpx.AsyncClient, tenant: Tenant) -> None:
    roles = await role_ids(client, tenant)
    base = {"username": f"bob-{uuid.uuid4().hex[:8]}", "password": "long enough!"}

    resp = await client.post("/api/v1/users", json={**base, "password": "short"}, headers=tenant.headers)
    body = assert_problem(resp, 422, "password")
    assert "short" not in resp.text.replace("at least", "")  # the password is never echoed
    assert "8 characters" in body["detail"]
    assert_problem(
        await client.post("/api/v1/users", json={**base, "email": "nope"}, headers=tenant.headers),
        422,
        "email",
    )
    assert_problem(
        await client.post("/api/v1/users", json={**base, "admin": True}, headers=tenant.headers), 422, "admin"
    )
    assert_problem(
        await client.post("/api/v1/users", json={**base, "username": "has space"}, headers=tenant.headers),
        422,
        "username",
    )
    resp = await client.post(
        "/api/v1/users", json={**base, "role_ids": [str(uuid.uuid4())]}, headers=tenant.headers
    )
    assert_problem(resp, 404, "role_ids")
    assert await count_users(tenant, base["username"]) == 0

    created = await client.post(
        "/api/v1/users", json={**base, "role_ids": [roles["Viewer"]]}, headers=tenant.headers
    )
    assert created.status_code == 201
    # Usernames are unique across the installation, whatever the case.
    dup = await client.post(
        "/api/v1/users", json={**base, "username": base["username"].upper()}, headers=tenant.headers
    )
    assert_problem(dup, 409, "username")
    assert_problem(
        await client.post(
            "/api/v1/users", json={**base, "username": tenant.admin_username}, headers=tenant.headers
        ),
        409,
        "username",
    )


async def test_reset_password_invalidates_tokens(client: httpx.AsyncClient, tenant: Tenant) -> None:
    user_id, username, headers = await tenant.user("Operator")
    pair = (await login(client, username)).json()
    resp = await client.post(
        f"/api/v1/users/{user_id}/password", json={"password": "brand new password"}, headers=tenant.headers
    )
    assert resp.status_code == 204, resp.text
    assert_problem(await client.get("/api/v1/auth/me", headers=headers), 401)
    assert_problem(
        await client.post("/api/v1/auth/refresh", data={"refresh_token": pair["refresh_token"]}), 401
    )
    assert_problem(await login(client, username), 401)
    assert (await login(client, username, "brand new password")).status_code == 200
    assert_problem(
        await client.post(
            f"/api/v1/users/{user_id}/password", json={"password": "x"}, headers=tenant.headers
        ),
        422,
        "password",
    )


async def test_self_and_last_administrator(client: httpx.AsyncClient, tenant: Tenant) -> None:
    roles = await role_ids(client, tenant)
    me = tenant.admin_id
    assert_problem(await client.delete(f"/api/v1/users/{me}", headers=tenant.headers), 409)
    assert_problem(
        await client.patch(f"/api/v1/users/{me}", json={"is_active": False}, headers=tenant.headers),
        409,
        "is_active",
    )
    # The only Administrator cannot give the role up.
    resp = await client.put(
        f"/api/v1/users/{me}/roles", json={"role_ids": [roles["Viewer"]]}, headers=tenant.headers
    )
    assert_problem(resp, 409, "role_ids")

    other_id, _, other_headers = await tenant.user("Administrator")
    # With a second Administrator the first may step down; then the second is the last one.
    resp = await client.put(
        f"/api/v1/users/{me}/roles", json={"role_ids": [roles["Viewer"]]}, headers=tenant.headers
    )
    assert resp.status_code == 200, resp.text
    resp = await client.put(
        f"/api/v1/users/{other_id}/roles", json={"role_ids": [roles["Developer"]]}, headers=other_headers
    )
    assert_problem(resp, 409, "role_ids")
    assert_problem(await client.delete(f"/api/v1/users/{other_id}", headers=other_headers), 409)
    # Nothing changed for the one that stays.
    got = await client.get(f"/api/v1/users/{other_id}", headers=other_headers)
    assert [r["name"] for r in got.json()["roles"]] == ["Administrator"]


async def test_no_privilege_escalation(client: httpx.AsyncClient, tenant: Tenant) -> None:
    roles = await role_ids(client, tenant)
    # A user manager who is not an Administrator.
    resp = await client.post(
        "/api/v1/roles",
        json={
            "name": "User managers",
            "permissions": [{"object": "users", "action": a} for a in ("read", "create", "update", "delete")]
            + [{"object": "roles", "action": "read"}],
        },
        headers=tenant.headers,
    )
    assert resp.status_code == 201, resp.text
    manager_role = resp.json()["id"]
    mgr_id, _, mgr = await tenant.user("Viewer")
    r = await client.put(
        f"/api/v1/users/{mgr_id}/roles", json={"role_ids": [manager_role]}, headers=tenant.headers
    )
    assert r.status_code == 200

    name = f"eve-{uuid.uuid4().hex[:8]}"
    body = {"username": name, "password": "long enough!", "role_ids": [roles["Administrator"]]}
    assert_problem(await client.post("/api/v1/users", json=body, headers=mgr), 403, "role_ids")
    assert await count_users(tenant, name) == 0
    # ... nor grant themselves more, nor take over an Administrator.
    r = await client.put(
        f"/api/v1/users/{mgr_id}/roles", json={"role_ids": [roles["Administrator"]]}, headers=mgr
    )
    assert_problem(r, 403, "role_ids")
    r = await client.post(
        f"/api/v1/users/{tenant.admin_id}/password", json={"password": "taken over!"}, headers=mgr
    )
    assert_problem(r, 403)
    # Within their own powers they do manage users.
    body = {"username": name, "password": "long enough!", "role_ids": [manager_role]}
    assert (await client.post("/api/v1/users", json=body, headers=mgr)).status_code == 201
    # A role creator cannot mint a role above their own powers either.
    r = await client.post(
        "/api/v1/roles",
        json={"name": "x", "permissions": [{"object": "roles", "action": "create"}]},
        headers=mgr,
    )
    assert_problem(r, 403)


# What each built-in role may do -----------------------------------------------------------------

NEW_USER = {"password": "long enough!"}


@pytest.mark.parametrize(
    ("role", "method", "path", "body", "allowed"),
    [
        ("Viewer", "POST", "/api/v1/users", NEW_USER, False),
        ("Viewer", "GET", "/api/v1/users", None, False),
        ("Viewer", "GET", "/api/v1/roles", None, False),
        ("Viewer", "GET", "/api/v1/folders", None, True),
        ("Viewer", "POST", "/api/v1/folders", {"name": "f"}, False),
        ("Viewer", "GET", "/api/v1/auth/me", None, True),
        ("Operator", "POST", "/api/v1/roles", {"name": "r"}, False),
        ("Operator", "POST", "/api/v1/api-keys", {"name": "k"}, True),
        ("Operator", "GET", "/api/v1/api-keys", None, True),
        ("Operator", "DELETE", "/api/v1/folders/{folder}", None, False),
        ("Developer", "POST", "/api/v1/folders", {"name": "f"}, False),
        ("Developer", "PATCH", "/api/v1/accounts/current", {"description": "d"}, False),
        ("Developer", "GET", "/api/v1/roles/catalogue", None, False),
        ("Developer", "POST", "/api/v1/api-keys", {"name": "k"}, True),
        ("Administrator", "POST", "/api/v1/users", NEW_USER, True),
        ("Administrator", "POST", "/api/v1/roles", {"name": "r"}, True),
        ("Administrator", "POST", "/api/v1/folders", {"name": "f"}, True),
        ("Administrator", "DELETE", "/api/v1/folders/{folder}", None, True),
        ("Administrator", "PATCH", "/api/v1/accounts/current", {"description": "d"}, True),
    ],
)
async def test_builtin_role_permissions(
    client: httpx.AsyncClient,
    tenant: Tenant,
    role: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    allowed: bool,
) -> None:
    folder = await client.post(
        "/api/v1/folders", json={"name": f"f-{uuid.uuid4().hex[:8]}"}, headers=tenant.headers
    )
    path = path.format(folder=folder.json()["id"])
    if body is not None and path == "/api/v1/users":
        body = {**body, "username": f"u-{uuid.uuid4().hex[:8]}"}
    _, _, headers = await tenant.user(role)
    resp = await client.request(method, path, json=body, headers=headers)
    if allowed:
        assert 200 <= resp.status_code < 300, resp.text
    else:
        assert_problem(resp, 403)


# Roles ---------------------------------------------------------------------------------------------


async def test_catalogue(client: httpx.AsyncClient, tenant: Tenant) -> None:
    resp = await client.get("/api/v1/roles/catalogue", headers=tenant.headers)
    assert resp.status_code == 200
    assert resp.json() == {
        "objects": [o.value for o in PermissionObject],
        "actions": [a.value for a in PermissionAction],
    }


async def test_role_crud(client: httpx.AsyncClient, tenant: Tenant) -> None:
    folder = (await client.post("/api/v1/folders", json={"name": "Finance"}, headers=tenant.headers)).json()
    resp = await client.post(
        "/api/v1/roles",
        json={
            "name": "Finance operators",
            "description": "Run the finance bots",
            "permissions": [{"object": "jobs", "action": "run"}, {"object": "robots", "action": "read"}],
            "all_folders": False,
            "folder_ids": [folder["id"]],
        },
        headers=tenant.headers,
    )
    assert resp.status_code == 201, resp.text
    role = resp.json()
    assert role["builtin"] is False and role["all_folders"] is False
    assert role["folder_ids"] == [folder["id"]]
    assert {"object": "jobs", "action": "run"} in role["permissions"]

    got = await client.get(f"/api/v1/roles/{role['id']}", headers=tenant.headers)
    assert got.json() == role
    listing = await client.get("/api/v1/roles", params={"builtin": "false"}, headers=tenant.headers)
    assert [r["id"] for r in listing.json()["items"]] == [role["id"]]
    assert (await client.get("/api/v1/roles", headers=tenant.headers)).json()["total"] == 5

    # Replace permissions (giving one again is fine), widen to all folders.
    resp = await client.patch(
        f"/api/v1/roles/{role['id']}",
        json={
            "permissions": [{"object": "jobs", "action": "run"}, {"object": "jobs", "action": "read"}],
            "all_folders": True,
        },
        headers=tenant.headers,
    )
    assert resp.status_code == 200, resp.text
    assert sorted((p["object"], p["action"]) for p in resp.json()["permissions"]) == [
        ("jobs", "read"),
        ("jobs", "run"),
    ]
    assert resp.json()["all_folders"] is True and resp.json()["folder_ids"] == []

    # A role held by a user cannot be deleted; an unused one can.
    user_id, _, _ = await tenant.user("Viewer")
    await client.put(
        f"/api/v1/users/{user_id}/roles", json={"role_ids": [role["id"]]}, headers=tenant.headers
    )
    assert_problem(await client.delete(f"/api/v1/roles/{role['id']}", headers=tenant.headers), 409)
    await client.put(f"/api/v1/users/{user_id}/roles", json={"role_ids": []}, headers=tenant.headers)
    assert (await client.delete(f"/api/v1/roles/{role['id']}", headers=tenant.headers)).status_code == 204
    assert_problem(await client.get(f"/api/v1/roles/{role['id']}", headers=tenant.headers), 404)


async def test_role_validation_and_builtins(client: httpx.AsyncClient, tenant: Tenant) -> None:
    roles = await role_ids(client, tenant)
    r = await client.post(
        "/api/v1/roles",
        json={"name": "x", "permissions": [{"object": "spaceships", "action": "read"}]},
        headers=tenant.headers,
    )
    assert_problem(r, 422, "permissions.0.object")
    r = await client.post(
        "/api/v1/roles",
        json={"name": "x", "permissions": [{"object": "jobs", "action": "fly"}]},
        headers=tenant.headers,
    )
    assert_problem(r, 422, "permissions.0.action")
    r = await client.post(
        "/api/v1/roles", json={"name": "x", "folder_ids": [str(uuid.uuid4())]}, headers=tenant.headers
    )
    assert_problem(r, 422, "folder_ids")  # folders given while the role sees all of them
    r = await client.post(
        "/api/v1/roles",
        json={"name": "x", "all_folders": False, "folder_ids": [str(uuid.uuid4())]},
        headers=tenant.headers,
    )
    assert_problem(r, 404, "folder_ids")
    assert_problem(await client.post("/api/v1/roles", json={"name": ""}, headers=tenant.headers), 422, "name")
    assert_problem(
        await client.post("/api/v1/roles", json={"name": "viewer"}, headers=tenant.headers), 409, "name"
    )
    async with tenant.ctx.sessions() as session:
        names = set(
            (
                await session.execute(sa.select(Role.name).where(Role.account_id == tenant.account_id))
            ).scalars()
        )
    assert names == {"Administrator", "Developer", "Operator", "Viewer"}  # the failures wrote nothing

    for name, role_id in roles.items():
        assert_problem(
            await client.patch(
                f"/api/v1/roles/{role_id}", json={"description": "mine"}, headers=tenant.headers
            ),
            409,
        )
        assert_problem(await client.delete(f"/api/v1/roles/{role_id}", headers=tenant.headers), 409)
        got = (await client.get(f"/api/v1/roles/{role_id}", headers=tenant.headers)).json()
        assert got["name"] == name and got["builtin"] is True


async def test_other_accounts_ids_are_not_found(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    their_roles = await role_ids(client, other_tenant)
    their_user, _, _ = await other_tenant.user("Viewer")
    their_folder = (
        await client.post("/api/v1/folders", json={"name": "theirs"}, headers=other_tenant.headers)
    ).json()["id"]
    their_role = their_roles["Viewer"]
    for method, path, body in (
        ("GET", f"/api/v1/users/{their_user}", None),
        ("PATCH", f"/api/v1/users/{their_user}", {"display_name": "x"}),
        ("PUT", f"/api/v1/users/{their_user}/roles", {"role_ids": []}),
        ("POST", f"/api/v1/users/{their_user}/password", {"password": "long enough!"}),
        ("DELETE", f"/api/v1/users/{their_user}", None),
        ("GET", f"/api/v1/roles/{their_role}", None),
        ("PATCH", f"/api/v1/roles/{their_role}", {"description": "x"}),
        ("DELETE", f"/api/v1/roles/{their_role}", None),
        ("GET", f"/api/v1/folders/{their_folder}", None),
        ("PATCH", f"/api/v1/folders/{their_folder}", {"name": "mine"}),
        ("DELETE", f"/api/v1/folders/{their_folder}", None),
    ):
        assert_problem(await client.request(method, path, json=body, headers=tenant.headers), 404)
    # ... and inside bodies.
    name = f"carl-{uuid.uuid4().hex[:8]}"
    r = await client.post(
        "/api/v1/users",
        json={"username": name, "password": "long enough!", "role_ids": [their_role]},
        headers=tenant.headers,
    )
    assert_problem(r, 404, "role_ids")
    assert await count_users(tenant, name) == 0
    r = await client.post(
        "/api/v1/roles",
        json={"name": "x", "all_folders": False, "folder_ids": [their_folder]},
        headers=tenant.headers,
    )
    assert_problem(r, 404, "folder_ids")
    # Their objects are untouched, and our lists do not show them.
    assert (await client.get(f"/api/v1/users/{their_user}", headers=other_tenant.headers)).status_code == 200
    users = (await client.get("/api/v1/users", headers=tenant.headers)).json()["items"]
    assert str(their_user) not in {u["id"] for u in users}
