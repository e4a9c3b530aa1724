"""Logging in, refresh-token rotation and reuse detection, revocation, forged and expired tokens,
API keys, and the login throttle, all over HTTP as a client sees them."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import sqlalchemy as sa

from rpa_common.models import ApiKey, AuditRecord, LoginThrottle, RefreshToken
from rpa_common.nats.messages import AuthChanged
from rpa_common.nats.subjects import AUTH_CHANGED
from rpa_common.security import JWT_ALG, JWT_AUDIENCE
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


async def login(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/api/v1/auth/token", data={"username": username, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_token_flow_rotation_reuse_revoke_logout_all(client: httpx.AsyncClient, tenant: Tenant) -> None:
    resp = await login(client, tenant.admin_username)
    assert resp.status_code == 200, resp.text
    first = resp.json()
    assert first["token_type"] == "bearer"
    assert first["expires_in"] > 0
    assert first["access_token"] and first["refresh_token"]

    me = await client.get("/api/v1/auth/me", headers=bearer(first["access_token"]))
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["user"]["username"] == tenant.admin_username
    assert body["user"]["last_login_at"] is not None
    assert "password" not in str(body) and "password_hash" not in body["user"]
    assert body["account"]["id"] == str(tenant.account_id)
    assert [r["name"] for r in body["roles"]] == ["Administrator"]
    assert {"object": "users", "action": "create"} in body["permissions"]
    assert body["all_folders"] is True

    # Rotation: a form refresh gives a new pair; the old access token still works until it expires.
    resp = await client.post("/api/v1/auth/refresh", data={"refresh_token": first["refresh_token"]})
    assert resp.status_code == 200, resp.text
    second = resp.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert (await client.get("/api/v1/auth/me", headers=bearer(second["access_token"]))).status_code == 200

    # Reuse of the spent token (as JSON this time): 401, and the whole family is revoked.
    resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert "already used" in assert_problem(resp, 401)["detail"]
    resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert_problem(resp, 401)

    # Revoke: the token can no longer be refreshed.
    third = (await login(client, tenant.admin_username)).json()
    resp = await client.post("/api/v1/auth/revoke", data={"refresh_token": third["refresh_token"]})
    assert resp.status_code == 204, resp.text
    assert_problem(
        await client.post("/api/v1/auth/refresh", data={"refresh_token": third["refresh_token"]}), 401
    )
    # An unknown token is not an error to revoke (RFC 7009); a missing one is a 422 naming the field.
    assert (await client.post("/api/v1/auth/revoke", data={"refresh_token": "nope"})).status_code == 204
    assert_problem(await client.post("/api/v1/auth/revoke", json={}), 422, "refresh_token")
    assert_problem(await client.post("/api/v1/auth/refresh", data={}), 422, "refresh_token")

    # Log out everywhere: every earlier access token and refresh token stops working.
    fourth = (await login(client, tenant.admin_username)).json()
    fifth = (await login(client, tenant.admin_username)).json()
    resp = await client.post("/api/v1/auth/logout-all", headers=bearer(fourth["access_token"]))
    assert resp.status_code == 204, resp.text
    for token in (fourth["access_token"], fifth["access_token"], tenant.token):
        assert_problem(await client.get("/api/v1/auth/me", headers=bearer(token)), 401)
    assert_problem(
        await client.post("/api/v1/auth/refresh", data={"refresh_token": fifth["refresh_token"]}), 401
    )
    # ... while a fresh login works again.
    sixth = (await login(client, tenant.admin_username)).json()
    assert (await client.get("/api/v1/auth/me", headers=bearer(sixth["access_token"]))).status_code == 200

    async with tenant.ctx.sessions() as session:
        actions = set(
            (
                await session.execute(
                    sa.select(AuditRecord.action).where(
                        AuditRecord.account_id == tenant.account_id, AuditRecord.actor_id == tenant.admin_id
                    )
                )
            ).scalars()
        )
        stored = (
            await session.execute(
                sa.select(RefreshToken.token_hash).where(RefreshToken.user_id == tenant.admin_id)
            )
        ).scalars()
        hashes = set(stored)
    assert {"login", "refresh_token_reused", "revoke_refresh_token", "logout_all"} <= actions
    # Refresh tokens are stored hashed, never as given.
    assert first["refresh_token"] not in hashes and hashes


async def test_wrong_password_and_unknown_user_look_the_same(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    wrong = assert_problem(await login(client, tenant.admin_username, "not the password"), 401)
    unknown = assert_problem(await login(client, f"nobody-{uuid.uuid4().hex[:8]}", "not the password"), 401)
    assert wrong["detail"] == unknown["detail"]
    assert_problem(await client.post("/api/v1/auth/token", data={"password": "x"}), 422, "username")
    # The failed login of a known user is audited, with the user as actor (never the password).
    async with tenant.ctx.sessions() as session:
        rows = (
            (
                await session.execute(
                    sa.select(AuditRecord).where(
                        AuditRecord.account_id == tenant.account_id, AuditRecord.action == "login_failed"
                    )
                )
            )
            .scalars()
            .all()
        )
    assert [r.actor_id for r in rows] == [tenant.admin_id]
    assert "not the password" not in str(rows[0].changes)


async def test_unknown_user_takes_as_long_as_a_wrong_password(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    """A password hash is checked in both cases, so timing does not tell which usernames exist."""

    async def timed(username: str) -> float:
        started = time.perf_counter()
        assert_problem(await login(client, username, "not the password"), 401)
        return time.perf_counter() - started

    known = sorted([await timed(tenant.admin_username) for _ in range(3)])[1]
    unknown = sorted([await timed(f"nobody-{uuid.uuid4().hex[:8]}") for _ in range(3)])[1]
    # Loose bounds (a shared machine is noisy); without the dummy hash the unknown user is ~10x faster.
    assert unknown > known / 2.5, (known, unknown)


async def test_expired_and_forged_tokens_are_refused(client: httpx.AsyncClient, tenant: Tenant) -> None:
    secret = tenant.ctx.settings.secret_key.get_secret_value()
    now = datetime.now(UTC)
    claims = {
        "sub": str(tenant.admin_id),
        "acc": str(tenant.account_id),
        "ver": 0,
        "aud": JWT_AUDIENCE,
        "iat": int((now - timedelta(hours=1)).timestamp()),
        "exp": int((now - timedelta(minutes=1)).timestamp()),
    }
    expired = jwt.encode(claims, secret, algorithm=JWT_ALG)
    valid_claims = {**claims, "exp": int((now + timedelta(minutes=5)).timestamp())}
    other_secret = jwt.encode(valid_claims, "some-other-secret-of-enough-length!", algorithm=JWT_ALG)
    alg_none = jwt.encode(valid_claims, "", algorithm="none")
    other_account = jwt.encode({**valid_claims, "acc": str(uuid.uuid4())}, secret, algorithm=JWT_ALG)
    for token in (expired, other_secret, alg_none, other_account, "garbage", "rpak_000000000000_nope"):
        assert_problem(await client.get("/api/v1/auth/me", headers=bearer(token)), 401)
    assert_problem(await client.get("/api/v1/auth/me"), 401)
    # The same claims signed with the right secret do work: the refusals above are for the forgery.
    assert (
        await client.get(
            "/api/v1/auth/me", headers=bearer(jwt.encode(valid_claims, secret, algorithm=JWT_ALG))
        )
    ).status_code == 200


async def test_api_keys(client: httpx.AsyncClient, tenant: Tenant) -> None:
    op_id, _, op_headers = await tenant.user("Operator")
    resp = await client.post("/api/v1/api-keys", json={"name": "ci pipeline"}, headers=op_headers)
    assert resp.status_code == 201, resp.text
    created = resp.json()
    key = created["key"]
    assert key.startswith("rpak_") and created["prefix"] in key

    # The key acts as its user, with its user's roles.
    me = await client.get("/api/v1/auth/me", headers=bearer(key))
    assert me.status_code == 200, me.text
    assert me.json()["user"]["id"] == str(op_id)
    assert me.json()["via_api_key"] == created["id"]
    assert (await client.get("/api/v1/folders", headers=bearer(key))).status_code == 200
    assert_problem(await client.post("/api/v1/users", headers=bearer(key), json={}), 403)

    # Listings never show the secret.
    listing = await client.get("/api/v1/api-keys", headers=op_headers)
    assert listing.status_code == 200
    assert listing.json()["total"] == 1
    assert (
        key not in listing.text and "key_hash" not in listing.text and "key" not in listing.json()["items"][0]
    )
    # Only user managers list every key of the account, and revoke others' keys.
    assert_problem(await client.get("/api/v1/api-keys", params={"all": "true"}, headers=op_headers), 403)
    admin_key = (await client.post("/api/v1/api-keys", json={"name": "admin"}, headers=tenant.headers)).json()
    assert (await client.get("/api/v1/api-keys", headers=tenant.headers)).json()["total"] == 1
    everything = await client.get("/api/v1/api-keys", params={"all": "true"}, headers=tenant.headers)
    assert everything.json()["total"] == 2
    assert_problem(await client.delete(f"/api/v1/api-keys/{admin_key['id']}", headers=op_headers), 404)

    # Revoked: 401 at once.
    assert (await client.delete(f"/api/v1/api-keys/{created['id']}", headers=op_headers)).status_code == 204
    assert_problem(await client.get("/api/v1/auth/me", headers=bearer(key)), 401)
    listed = (await client.get("/api/v1/api-keys", headers=op_headers)).json()["items"][0]
    assert listed["revoked_at"] is not None
    assert listed["last_used_at"] is not None  # it was used before it was revoked

    # Expired: 401; an expiry in the past is refused at creation (422 naming the field).
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    assert_problem(
        await client.post("/api/v1/api-keys", json={"name": "x", "expires_at": past}, headers=op_headers),
        422,
        "expires_at",
    )
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    short = (
        await client.post("/api/v1/api-keys", json={"name": "s", "expires_at": soon}, headers=op_headers)
    ).json()
    assert (await client.get("/api/v1/auth/me", headers=bearer(short["key"]))).status_code == 200
    async with tenant.ctx.sessions() as session:
        await session.execute(
            sa.update(ApiKey)
            .where(ApiKey.id == uuid.UUID(short["id"]))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()
    # Changed behind the API's back, as another replica would: announced on NATS, which drops the
    # cached grant here (within the cache's few seconds otherwise).
    await tenant.ctx.nc.publish(AUTH_CHANGED, AuthChanged(account_id=tenant.account_id).encode())
    await tenant.ctx.nc.flush()
    deadline = asyncio.get_running_loop().time() + 2
    while (await client.get("/api/v1/auth/me", headers=bearer(short["key"]))).status_code == 200:
        assert asyncio.get_running_loop().time() < deadline, "AUTH_CHANGED did not drop the cached key"
        await asyncio.sleep(0.02)
    assert_problem(await client.get("/api/v1/auth/me", headers=bearer(short["key"])), 401)

    # A Viewer may not make keys; unknown fields are named.
    _, _, viewer = await tenant.user("Viewer")
    assert_problem(await client.post("/api/v1/api-keys", json={"name": "v"}, headers=viewer), 403)
    assert_problem(
        await client.post("/api/v1/api-keys", json={"name": "v", "scope": 1}, headers=op_headers),
        422,
        "scope",
    )


async def test_api_key_of_a_disabled_user_is_refused(client: httpx.AsyncClient, tenant: Tenant) -> None:
    op_id, _, op_headers = await tenant.user("Operator")
    key = (await client.post("/api/v1/api-keys", json={"name": "k"}, headers=op_headers)).json()["key"]
    resp = await client.patch(f"/api/v1/users/{op_id}", json={"is_active": False}, headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    assert_problem(await client.get("/api/v1/auth/me", headers=bearer(key)), 401)


async def test_login_throttle(client: httpx.AsyncClient, tenant: Tenant) -> None:
    settings = tenant.ctx.settings
    _, username, _ = await tenant.user("Viewer")
    for _ in range(settings.login_max_failures):
        assert_problem(await login(client, username, "wrong password"), 401)
    # Past the limit even the right password is refused, with Retry-After.
    resp = await login(client, username)
    body = assert_problem(resp, 429)
    retry_after = int(resp.headers["Retry-After"])
    assert 1 <= retry_after <= settings.login_lockout_s + 1
    assert "try again" in body["detail"]
    async with tenant.ctx.sessions() as session:
        counted = (await session.execute(sa.select(sa.func.max(LoginThrottle.failures)))).scalar_one()
    assert counted >= settings.login_max_failures  # held in the database, for every replica

    # After the lockout the right password works, and resets the user+address count.
    await asyncio.sleep(retry_after + 0.2)
    assert (await login(client, username)).status_code == 200
    assert_problem(await login(client, username, "wrong password"), 401)
    assert (await login(client, username)).status_code == 200

    # An unknown username is throttled exactly like a real one.
    ghost = f"ghost-{uuid.uuid4().hex[:8]}"
    for _ in range(settings.login_max_failures):
        assert_problem(await login(client, ghost, "wrong password"), 401)
    assert_problem(await login(client, ghost, "wrong password"), 429)


async def test_lockout_doubles(client: httpx.AsyncClient, tenant: Tenant) -> None:
    settings = tenant.ctx.settings
    _, username, _ = await tenant.user("Viewer")
    for _ in range(settings.login_max_failures):
        assert_problem(await login(client, username, "wrong password"), 401)
    first = int((await login(client, username)).headers["Retry-After"])
    await asyncio.sleep(first + 0.2)
    assert_problem(await login(client, username, "wrong password"), 401)
    resp = await login(client, username)
    assert_problem(resp, 429)
    assert int(resp.headers["Retry-After"]) >= 2 * settings.login_lockout_s


async def test_swagger_can_log_in(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    schemes = doc["components"]["securitySchemes"]
    flows = [s["flows"]["password"]["tokenUrl"] for s in schemes.values() if s["type"] == "oauth2"]
    assert flows == ["/api/v1/auth/token"]
    form = doc["paths"]["/api/v1/auth/token"]["post"]["requestBody"]["content"]
    assert "application/x-www-form-urlencoded" in form
