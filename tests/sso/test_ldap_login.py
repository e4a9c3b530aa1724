"""LDAP login against a real OpenLDAP (``slapd`` on loopback, started and killed by this module).

An administrator configures the account's directory through the API (the bind password is never
returned); users then log in with their directory password: the first login creates the orchestrator
user, an existing user of the account with the same name is linked, groups become roles, a disabled
entry (``shadowExpire`` in the past) or a wrong password is a 401 counted by the login throttle, and
an unreachable directory is a 503. Without slapd the tests are skipped loudly (and fail under CI).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from rpa_common.models import IdentityProvider, LoginThrottle, User
from tests.conftest import Tenant
from tests.sso.slapd_server import ROOT_DN, ROOT_PW, SUFFIX, Slapd, slapd_binary
from tests.support import free_port

pytestmark = pytest.mark.sso

PROBLEM = "application/problem+json"
USERS = [
    {"uid": "alice", "cn": "Alice Admin", "password": "alice-pw-1"},
    {"uid": "bob", "cn": "Bob Builder", "password": "bob-pw-1"},
    {"uid": "carol", "cn": "Carol Gone", "password": "carol-pw-1", "shadowExpire": "1"},
    {"uid": "dave", "cn": "Dave Linked", "password": "dave-pw-1"},
]
GROUPS = {"rpa-admins": ["alice"], "rpa-devs": ["bob", "dave"], "unrelated": ["alice", "bob"]}


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    if slapd_binary() is None:
        reason = "slapd is not installed (make sso-test installs it): the LDAP login tests did NOT run"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    server = Slapd(Path(tmp_path_factory.mktemp("slapd")), USERS, GROUPS)
    try:
        yield server
    finally:
        server.stop()


def _provider_body(url: str, name: str = "corp") -> dict[str, Any]:
    return {
        "name": name,
        "ldap": {
            "url": url,
            "bind_dn": ROOT_DN,
            "user_base_dn": f"ou=people,{SUFFIX}",
            "group_base_dn": f"ou=groups,{SUFFIX}",
            "timeout_s": 3,
        },
        "bind_password": ROOT_PW,
        "group_roles": {"rpa-admins": ["Administrator"], "rpa-devs": ["Developer"]},
    }


async def _login(client: httpx.AsyncClient, provider_id: str, username: str, password: str) -> httpx.Response:
    return await client.post(
        f"/api/v1/auth/ldap/{provider_id}/token", data={"username": username, "password": password}
    )


def _problem(resp: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = resp.json()
    if field is not None:
        assert field in [e.get("field") for e in body.get("errors", [])], body
    return body


async def _me(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    resp = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_ldap_provider_config_and_logins(
    slapd: Slapd, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    admin = tenant.headers

    # Configuring: accounts:update only; roles must exist; the secret never comes back.
    _, _, operator = await tenant.user("Operator")
    assert (
        await client.post("/api/v1/identity-providers", json=_provider_body(slapd.url), headers=operator)
    ).status_code == 403
    bad = _provider_body(slapd.url)
    bad["group_roles"] = {"rpa-admins": ["No Such Role"]}
    _problem(await client.post("/api/v1/identity-providers", json=bad, headers=admin), 422, "group_roles")
    bad = _provider_body(slapd.url)
    bad["ldap"]["user_filter"] = "(uid=alice)"
    _problem(await client.post("/api/v1/identity-providers", json=bad, headers=admin), 422)

    resp = await client.post("/api/v1/identity-providers", json=_provider_body(slapd.url), headers=admin)
    assert resp.status_code == 201, resp.text
    provider = resp.json()
    pid = provider["id"]
    assert provider["has_bind_password"] is True
    assert ROOT_PW not in resp.text
    listing = await client.get("/api/v1/identity-providers", headers=admin)
    assert listing.status_code == 200 and [p["id"] for p in listing.json()] == [pid]
    assert ROOT_PW not in listing.text
    _problem(
        await client.post("/api/v1/identity-providers", json=_provider_body(slapd.url), headers=admin),
        409,
        "name",
    )
    async with tenant.ctx.sessions() as session:
        row = await session.get(IdentityProvider, uuid.UUID(pid))
        assert row is not None and row.secret_encrypted is not None
        assert ROOT_PW.encode() not in row.secret_encrypted
    audit = await client.get("/api/v1/audit", headers=admin)
    assert ROOT_PW not in audit.text

    # First login creates the user, with roles from the directory groups.
    resp = await _login(client, pid, "alice", "alice-pw-1")
    assert resp.status_code == 200, resp.text
    me = await _me(client, resp.json()["access_token"])
    assert me["user"]["username"] == "alice"
    assert me["user"]["email"] == "alice@rpa.test"
    assert me["user"]["display_name"] == "Alice Admin"
    assert me["account"]["id"] == str(tenant.account_id)
    assert [r["name"] for r in me["roles"]] == ["Administrator"]
    alice_id = me["user"]["id"]
    # A second login is the same user; its refresh token works like any other.
    resp = await _login(client, pid, "alice", "alice-pw-1")
    assert resp.status_code == 200, resp.text
    assert (await _me(client, resp.json()["access_token"]))["user"]["id"] == alice_id
    refreshed = await client.post(
        "/api/v1/auth/refresh", data={"refresh_token": resp.json()["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text

    resp = await _login(client, pid, "bob", "bob-pw-1")
    assert resp.status_code == 200, resp.text
    assert [r["name"] for r in (await _me(client, resp.json()["access_token"]))["roles"]] == ["Developer"]

    # An existing orchestrator user of the account with the directory's name is linked, its roles
    # replaced by the mapped ones.
    dave_id, _, _ = await tenant.user("Operator", username="dave")
    resp = await _login(client, pid, "dave", "dave-pw-1")
    assert resp.status_code == 200, resp.text
    me = await _me(client, resp.json()["access_token"])
    assert me["user"]["id"] == str(dave_id)
    assert [r["name"] for r in me["roles"]] == ["Developer"]

    # Refusals: all the same 401, counted by the login throttle.
    # (an empty password, which LDAP would take as an anonymous bind, does not even reach the directory)
    assert (await _login(client, pid, "bob", "")).status_code == 422
    for username, password in (("bob", "wrong"), ("carol", "carol-pw-1"), ("nobody", "x-pw")):
        body = _problem(await _login(client, pid, username, password), 401)
        assert "wrong username or password" in body["detail"]
    async with tenant.ctx.sessions() as session:
        failures = (await session.execute(sa.select(sa.func.sum(LoginThrottle.failures)))).scalar_one()
        assert failures and failures >= 3
        carol = (await session.execute(sa.select(User).where(User.username == "carol"))).scalar_one_or_none()
        assert carol is None  # a disabled entry never becomes a user

    # Unknown provider: 404; an unreachable directory: 503 with a clear problem.
    _problem(await _login(client, str(uuid.uuid4()), "alice", "alice-pw-1"), 404)
    down = _provider_body(f"ldap://127.0.0.1:{free_port()}", name="down")
    resp = await client.post("/api/v1/identity-providers", json=down, headers=admin)
    assert resp.status_code == 201, resp.text
    body = _problem(await _login(client, resp.json()["id"], "alice", "alice-pw-1"), 503)
    assert "cannot be reached" in body["detail"]

    # A wrong service password is the administrator's problem: 503, not a user's 401.
    resp = await client.patch(
        f"/api/v1/identity-providers/{pid}", json={"bind_password": "nope"}, headers=admin
    )
    assert resp.status_code == 200, resp.text
    _problem(await _login(client, pid, "alice", "alice-pw-1"), 503)

    # A disabled provider logs nobody in; deleting it works.
    resp = await client.patch(
        f"/api/v1/identity-providers/{pid}",
        json={"is_active": False, "bind_password": ROOT_PW},
        headers=admin,
    )
    assert resp.status_code == 200 and resp.json()["is_active"] is False
    _problem(await _login(client, pid, "alice", "alice-pw-1"), 404)
    assert (await client.delete(f"/api/v1/identity-providers/{pid}", headers=admin)).status_code == 204
    assert (await client.get(f"/api/v1/identity-providers/{pid}", headers=admin)).status_code == 404
