"""External applications (OAuth2 client credentials): creation with the secret shown once, scopes
capped by the creator, the token endpoint and its RFC 6749 errors, tokens narrowed to the app's
scopes and folders, and disabling, rotating and deleting ending tokens at once."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import sqlalchemy as sa

from rpa_common.models import AuditRecord, ExternalApp
from tests.conftest import Tenant

API = "/api/v1"
TOKEN = f"{API}/auth/token"


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


async def _app(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    resp = await client.post(
        f"{API}/external-apps", json={"name": f"ci-{uuid.uuid4().hex[:8]}", **body}, headers=headers
    )
    assert resp.status_code == 201, resp.text
    out: dict[str, Any] = resp.json()
    return out


async def _token(client: httpx.AsyncClient, app: dict[str, Any], **form: str) -> httpx.Response:
    return await client.post(
        TOKEN,
        data={"grant_type": "client_credentials", **form},
        headers=_basic(app["client_id"], app["client_secret"]),
    )


async def test_client_credentials_flow(client: httpx.AsyncClient, tenant: Tenant) -> None:
    app = await _app(client, tenant.headers, scopes=["processes:read", "Viewer"])
    # A role name gives that role's permissions; the stored scopes are permissions only.
    assert (
        "processes:read" in app["scopes"] and "jobs:read" in app["scopes"] and "Viewer" not in app["scopes"]
    )
    assert app["client_id"].startswith("rpac_") and len(app["client_secret"]) >= 40

    # The secret is shown once: never in a listing, a read, or the database in clear.
    listing = await client.get(f"{API}/external-apps", headers=tenant.headers)
    assert listing.status_code == 200 and app["client_secret"] not in listing.text
    assert [a["id"] for a in listing.json()["items"]] == [app["id"]]
    one = await client.get(f"{API}/external-apps/{app['id']}", headers=tenant.headers)
    assert one.status_code == 200 and "client_secret" not in one.json()
    async with tenant.ctx.sessions() as session:
        row = await session.get(ExternalApp, uuid.UUID(app["id"]))
        assert row is not None and app["client_secret"] not in row.secret_hash

    # HTTP Basic client authentication.
    resp = await _token(client, app)
    assert resp.status_code == 200, resp.text
    tok = resp.json()
    assert tok["token_type"] == "bearer" and tok["expires_in"] == 3600 and "refresh_token" not in tok
    assert set(tok["scope"].split()) == set(app["scopes"])
    bearer = {"Authorization": f"Bearer {tok['access_token']}"}
    me = (await client.get(f"{API}/auth/me", headers=bearer)).json()
    perms = {f"{p['object']}:{p['action']}" for p in me["permissions"]}
    assert perms == set(app["scopes"])
    assert (await client.get(f"{API}/processes", headers=bearer)).status_code == 200
    # Beyond its scopes: 403, although its creator (the admin) may.
    assert (await client.get(f"{API}/users", headers=bearer)).status_code == 403

    # Form-field client authentication, and a narrower scope on request.
    resp = await client.post(
        TOKEN,
        data={
            "grant_type": "client_credentials",
            "client_id": app["client_id"],
            "client_secret": app["client_secret"],
            "scope": "processes:read",
        },
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["scope"] == "processes:read"
    narrow = {"Authorization": f"Bearer {resp.json()['access_token']}"}
    assert (await client.get(f"{API}/processes", headers=narrow)).status_code == 200
    assert (await client.get(f"{API}/jobs", headers=narrow)).status_code == 403
    me = (await client.get(f"{API}/auth/me", headers=narrow)).json()
    assert [f"{p['object']}:{p['action']}" for p in me["permissions"]] == ["processes:read"]

    # Requests of the app are audited as the app.
    async with tenant.ctx.sessions() as session:
        actions = (
            await session.execute(
                sa.select(AuditRecord.action, AuditRecord.actor_type).where(
                    AuditRecord.account_id == tenant.account_id, AuditRecord.object_type == "external_app"
                )
            )
        ).all()
    assert ("create", "user") in [(a, str(t)) for a, t in actions]
    assert ("token", "external_app") in [(a, str(t)) for a, t in actions]


async def test_token_endpoint_errors_are_oauth2_json(client: httpx.AsyncClient, tenant: Tenant) -> None:
    app = await _app(client, tenant.headers, scopes=["processes:read"])

    def is_oauth(resp: httpx.Response, status: int, error: str) -> None:
        assert resp.status_code == status, resp.text
        assert resp.headers["content-type"].startswith("application/json")
        assert resp.json()["error"] == error and resp.json()["error_description"]
        assert resp.headers["cache-control"] == "no-store"

    is_oauth(await client.post(TOKEN, data={"grant_type": "client_credentials"}), 401, "invalid_client")
    wrong = await client.post(
        TOKEN, data={"grant_type": "client_credentials"}, headers=_basic(app["client_id"], "nope")
    )
    is_oauth(wrong, 401, "invalid_client")
    assert wrong.headers["www-authenticate"].startswith("Basic")
    unknown = await client.post(
        TOKEN, data={"grant_type": "client_credentials"}, headers=_basic("rpac_unknown", app["client_secret"])
    )
    is_oauth(unknown, 401, "invalid_client")
    is_oauth(await _token(client, app, scope="users:read"), 400, "invalid_scope")
    is_oauth(
        await client.post(TOKEN, data={"grant_type": "authorization_code"}), 400, "unsupported_grant_type"
    )
    # The password grant keeps answering as before.
    resp = await client.post(TOKEN, data={"username": tenant.admin_username})
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "password"


async def test_an_app_never_exceeds_its_creator(client: httpx.AsyncClient, tenant: Tenant) -> None:
    operator_id, _, operator = await tenant.user("Operator")
    resp = await client.post(
        f"{API}/external-apps",
        json={"name": "too-much", "scopes": ["jobs:run", "users:create"]},
        headers=operator,
    )
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["field"] == "scopes.1"
    resp = await client.post(
        f"{API}/external-apps", json={"name": "r", "scopes": ["Administrator"]}, headers=operator
    )
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "scopes.0"
    resp = await client.post(
        f"{API}/external-apps", json={"name": "r", "scopes": ["no-such-role"]}, headers=operator
    )
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "scopes.0"
    app = await _app(client, operator, scopes=["jobs:run", "processes:read"])
    # The operator's apps are theirs: the admin sees them with all=true only.
    mine = (await client.get(f"{API}/external-apps", headers=tenant.headers)).json()["items"]
    assert app["id"] not in [a["id"] for a in mine]
    every = (await client.get(f"{API}/external-apps?all=true", headers=tenant.headers)).json()["items"]
    assert app["id"] in [a["id"] for a in every]
    assert (await client.get(f"{API}/external-apps?all=true", headers=operator)).status_code == 403

    # A disabled creator ends their apps: no new token, and the tokens they had stop.
    resp = await _token(client, app)
    assert resp.status_code == 200, resp.text
    bearer = {"Authorization": f"Bearer {resp.json()['access_token']}"}
    assert (await client.get(f"{API}/processes", headers=bearer)).status_code == 200
    resp = await client.patch(f"{API}/users/{operator_id}", json={"is_active": False}, headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    assert (await client.get(f"{API}/processes", headers=bearer)).status_code == 401
    resp = await _token(client, app)
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"


async def test_folder_restriction(client: httpx.AsyncClient, tenant: Tenant) -> None:
    folder = await client.post(
        f"{API}/folders", json={"name": f"f-{uuid.uuid4().hex[:6]}"}, headers=tenant.headers
    )
    assert folder.status_code == 201
    app = await _app(client, tenant.headers, scopes=["folders:read"], folder_ids=[folder.json()["id"]])
    tok = (await _token(client, app)).json()["access_token"]
    me = (await client.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {tok}"})).json()
    assert me["all_folders"] is False and me["folder_ids"] == [folder.json()["id"]]
    missing = str(uuid.uuid4())
    resp = await client.post(
        f"{API}/external-apps",
        json={"name": "x", "scopes": ["folders:read"], "folder_ids": [missing]},
        headers=tenant.headers,
    )
    assert resp.status_code == 404 and resp.json()["errors"][0]["field"] == "folder_ids.0"


async def test_disable_rotate_delete_end_tokens(client: httpx.AsyncClient, tenant: Tenant) -> None:
    app = await _app(client, tenant.headers, scopes=["processes:read"])
    url = f"{API}/external-apps/{app['id']}"

    async def bearer() -> dict[str, str]:
        resp = await _token(client, app)
        assert resp.status_code == 200, resp.text
        return {"Authorization": f"Bearer {resp.json()['access_token']}"}

    h = await bearer()
    assert (await client.get(f"{API}/processes", headers=h)).status_code == 200
    resp = await client.patch(url, json={"is_active": False}, headers=tenant.headers)
    assert resp.status_code == 200 and resp.json()["is_active"] is False
    assert (await client.get(f"{API}/processes", headers=h)).status_code == 401
    assert (await _token(client, app)).status_code == 401
    resp = await client.patch(url, json={"is_active": True}, headers=tenant.headers)
    # Re-enabling does not bring back tokens from before the disable.
    assert (await client.get(f"{API}/processes", headers=h)).status_code == 401

    h = await bearer()
    rotated = await client.post(f"{url}/rotate-secret", headers=tenant.headers)
    assert rotated.status_code == 200 and rotated.json()["client_secret"] != app["client_secret"]
    assert (await client.get(f"{API}/processes", headers=h)).status_code == 401
    assert (await _token(client, app)).status_code == 401
    app["client_secret"] = rotated.json()["client_secret"]

    h = await bearer()
    assert (await client.delete(url, headers=tenant.headers)).status_code == 204
    assert (await client.get(f"{API}/processes", headers=h)).status_code == 401
    assert (await client.get(url, headers=tenant.headers)).status_code == 404
    assert (await client.delete(url, headers=tenant.headers)).status_code == 404
