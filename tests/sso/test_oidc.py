"""OpenID Connect login against a real OpenID provider (Node's ``oidc-provider`` on loopback).

A browser is played by an ``httpx`` client that follows the provider's redirects and posts its login
and consent forms. An administrator configures the provider (the client secret is never returned);
the login redirects with state, nonce and an S256 PKCE challenge; the callback creates the user with
roles from the ``groups`` claim and hands a one-time code to the web application, which trades it
for the usual token pair. A foreign or replayed state, a code traded with another login's verifier
(PKCE), a replayed hand-off code and a disabled user are refused with problem+json. The ID token
checks (signature, audience, issuer, nonce, expiry) are also tried on tokens signed here. Without
node the tests are skipped loudly (and fail under CI).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
import sqlalchemy as sa
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from rpa_api.auth.oidc import IdTokenInvalid, validate_id_token
from rpa_common.models import AuditRecord, OidcLogin, User
from tests.conftest import Tenant
from tests.sso.oidc_server import OidcProvider, node_binary
from tests.support import free_port

pytestmark = pytest.mark.sso

PROBLEM = "application/problem+json"
API = "http://api.test"
CALLBACK = f"{API}/api/v1/auth/oidc/callback"
CLIENT_ID = "rpa-orchestrator"
CLIENT_SECRET = "oidc-client-secret-" + "x" * 12
APP_URL = "https://app.rpa.test/login"
# Names of their own: the LDAP tests of the same session already made an "alice" and a "bob".
USERS: dict[str, dict[str, object]] = {
    "oidc-alice": {"name": "Alice Admin", "email": "alice@rpa.test", "groups": ["rpa-admins", "unrelated"]},
    "oidc-bob": {"name": "Bob Builder", "email": "bob@rpa.test", "groups": ["rpa-devs"]},
}


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    if node_binary() is None:
        reason = "node is not installed: the OpenID Connect login tests did NOT run"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    server = OidcProvider(free_port(), CLIENT_ID, CLIENT_SECRET, CALLBACK, USERS)
    try:
        yield server
    finally:
        server.stop()


def _body(issuer: str, name: str = "corp-sso") -> dict[str, Any]:
    return {
        "name": name,
        "kind": "oidc",
        "oidc": {"issuer": issuer, "client_id": CLIENT_ID, "app_url": APP_URL, "timeout_s": 5},
        "client_secret": CLIENT_SECRET,
        "group_roles": {"rpa-admins": ["Administrator"], "rpa-devs": ["Developer"]},
    }


def _problem(resp: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = resp.json()
    if field is not None:
        assert field in [e.get("field") for e in body.get("errors", [])], body
    return body


def _form(html: str) -> tuple[str, dict[str, str]]:
    """The first form of a page: its action and its named inputs' values."""
    m = re.search(r"<form[^>]*action=\"([^\"]*)\"[^>]*>(.*?)</form>", html, re.S | re.I)
    assert m is not None, html[:2000]
    fields: dict[str, str] = {}
    for tag in re.findall(r"<input[^>]*>", m.group(2), re.I):
        name = re.search(r'name="([^"]*)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if name:
            fields[unescape(name.group(1))] = unescape(value.group(1)) if value else ""
    return unescape(m.group(1)), fields


async def _at_provider(authorize_url: str, username: str) -> str:
    """Play the browser at the provider: follow redirects, fill the login and consent forms, until it
    sends the browser back to the orchestrator; return that callback URL."""
    async with httpx.AsyncClient(follow_redirects=False, timeout=10) as browser:
        resp = await browser.get(authorize_url)
        for _ in range(20):
            if resp.is_redirect:
                loc = urljoin(str(resp.url), resp.headers["location"])
                if loc.startswith(API):
                    return loc
                resp = await browser.get(loc)
                continue
            assert resp.status_code == 200, resp.text[:2000]
            action, fields = _form(resp.text)
            if "login" in fields:
                fields["login"] = username
                fields["password"] = "any-password"  # devInteractions accepts any for a known user
            resp = await browser.post(urljoin(str(resp.url), action), data=fields)
        raise AssertionError("the provider never sent the browser back")


async def _start(client: httpx.AsyncClient, pid: str) -> str:
    resp = await client.get(f"/api/v1/auth/oidc/{pid}/login")
    assert resp.status_code == 302, resp.text
    return resp.headers["location"]


async def _finish(client: httpx.AsyncClient, callback_url: str) -> str:
    """The callback; returns the one-time hand-off code from the web application's URL fragment."""
    resp = await client.get(callback_url.removeprefix(API))
    assert resp.status_code == 302, resp.text
    app, _, fragment = resp.headers["location"].partition("#")
    assert app == APP_URL
    code = parse_qs(fragment)["oidc_code"][0]
    return code


async def _login(client: httpx.AsyncClient, pid: str, username: str) -> dict[str, Any]:
    code = await _finish(client, await _at_provider(await _start(client, pid), username))
    resp = await client.post("/api/v1/auth/oidc/token", json={"code": code})
    assert resp.status_code == 200, resp.text
    tokens: dict[str, Any] = resp.json()
    return tokens


async def _me(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    resp = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_oidc_login(provider: OidcProvider, client: httpx.AsyncClient, tenant: Tenant) -> None:
    admin = tenant.headers

    # Configuring: the settings must match the kind; the client secret never comes back.
    bad = _body(provider.issuer)
    bad["oidc"]["scopes"] = ["profile"]
    _problem(await client.post("/api/v1/identity-providers", json=bad, headers=admin), 422)
    bad = _body(provider.issuer)
    bad["kind"] = "ldap"
    _problem(await client.post("/api/v1/identity-providers", json=bad, headers=admin), 422)
    resp = await client.post("/api/v1/identity-providers", json=_body(provider.issuer), headers=admin)
    assert resp.status_code == 201, resp.text
    created = resp.json()
    pid = created["id"]
    assert created["kind"] == "oidc" and created["has_client_secret"] is True and created["ldap"] is None
    assert CLIENT_SECRET not in resp.text
    listing = await client.get("/api/v1/identity-providers", headers=admin)
    assert CLIENT_SECRET not in listing.text
    assert CLIENT_SECRET not in (await client.get("/api/v1/audit", headers=admin)).text

    # The redirect: state, nonce and an S256 PKCE challenge; the state is bound to this browser.
    authorize = await _start(client, pid)
    query = parse_qs(urlsplit(authorize).query)
    assert authorize.startswith(provider.issuer)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert query["client_id"] == [CLIENT_ID] and query["redirect_uri"] == [CALLBACK]
    assert query["nonce"] and query["state"] and query["response_type"] == ["code"]
    assert client.cookies.get("rpa_oidc_state") == query["state"][0]
    async with tenant.ctx.sessions() as session:
        row = (await session.execute(sa.select(OidcLogin))).scalars().all()
        assert row and all(query["state"][0] not in r.state_hash for r in row)  # only its hash is kept

    # The happy path: the user is created with the mapped role; the token works on /me.
    callback = await _at_provider(authorize, "oidc-alice")
    hand_off = await _finish(client, callback)
    assert "rpa_oidc_state" not in client.cookies
    resp = await client.post("/api/v1/auth/oidc/token", json={"code": hand_off})
    assert resp.status_code == 200, resp.text
    tokens = resp.json()
    me = await _me(client, tokens["access_token"])
    assert me["user"]["username"] == "oidc-alice"
    assert me["user"]["email"] == "alice@rpa.test" and me["user"]["display_name"] == "Alice Admin"
    assert me["account"]["id"] == str(tenant.account_id)
    assert [r["name"] for r in me["roles"]] == ["Administrator"]
    alice_id = me["user"]["id"]
    refreshed = await client.post("/api/v1/auth/refresh", data={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text

    # Replays: the hand-off code is good once; the callback's state too (even with its cookie back).
    _problem(await client.post("/api/v1/auth/oidc/token", json={"code": hand_off}), 400, "code")
    state = parse_qs(urlsplit(callback).query)["state"][0]
    replay = await client.get(callback.removeprefix(API), headers={"Cookie": f"rpa_oidc_state={state}"})
    body = _problem(replay, 400, "state")
    assert "already used" in body["detail"]

    # A state this browser did not start (login CSRF) is refused before anything else.
    authorize = await _start(client, pid)
    callback = await _at_provider(authorize, "oidc-alice")
    client.cookies.set("rpa_oidc_state", "someone-elses-state", domain="api.test", path="/api/v1/auth/oidc")
    _problem(await client.get(callback.removeprefix(API)), 400, "state")

    # PKCE: a code traded with another login's verifier is refused by the provider.
    code_a = parse_qs(urlsplit(callback).query)["code"][0]
    authorize_b = await _start(client, pid)  # this browser's login is now B
    state_b = parse_qs(urlsplit(authorize_b).query)["state"][0]
    mixed = await client.get("/api/v1/auth/oidc/callback", params={"state": state_b, "code": code_a})
    body = _problem(mixed, 400, "code")
    assert "refused the authorization code" in body["detail"]
    # ... and an authorization request without a challenge is refused by the provider.
    no_pkce = re.sub(r"&code_challenge(_method)?=[^&]*", "", authorize_b)
    async with httpx.AsyncClient() as browser:
        answer = await browser.get(no_pkce)
    assert answer.is_redirect, answer.text
    refusal = parse_qs(urlsplit(answer.headers["location"]).query)
    assert refusal["error"] == ["invalid_request"] and "PKCE" in refusal["error_description"][0]
    # Brought back to the orchestrator, the provider's refusal is a 400 naming it.
    authorize_c = await _start(client, pid)
    async with httpx.AsyncClient() as browser:
        answer = await browser.get(re.sub(r"&code_challenge(_method)?=[^&]*", "", authorize_c))
    body = _problem(await client.get(answer.headers["location"].removeprefix(API)), 400, "error")
    assert "invalid_request" in body["detail"]

    # Bob: the Developer role; then the administrator maps his group to Operator instead.
    bob = await _me(client, (await _login(client, pid, "oidc-bob"))["access_token"])
    assert [r["name"] for r in bob["roles"]] == ["Developer"]
    resp = await client.patch(
        f"/api/v1/identity-providers/{pid}", json={"group_roles": {"rpa-devs": ["Operator"]}}, headers=admin
    )
    assert resp.status_code == 200, resp.text
    bob2 = await _me(client, (await _login(client, pid, "oidc-bob"))["access_token"])
    assert bob2["user"]["id"] == bob["user"]["id"]
    assert [r["name"] for r in bob2["roles"]] == ["Operator"]

    # A disabled user is refused at the callback (403 problem+json) and the refusal is audited.
    async with tenant.ctx.sessions() as session, session.begin():
        await session.execute(sa.update(User).where(User.id == uuid.UUID(alice_id)).values(is_active=False))
    callback = await _at_provider(await _start(client, pid), "oidc-alice")
    body = _problem(await client.get(callback.removeprefix(API)), 403)
    assert "disabled" in body["detail"]
    async with tenant.ctx.sessions() as session:
        failed = (
            (
                await session.execute(
                    sa.select(AuditRecord).where(
                        AuditRecord.object_id == alice_id, AuditRecord.action == "login_failed"
                    )
                )
            )
            .scalars()
            .all()
        )
        assert failed and failed[-1].changes["reason"] == "disabled"

    # An oidc provider takes no LDAP settings; a provider that cannot be reached is a 503.
    patch = {"bind_password": "x"}
    _problem(await client.patch(f"/api/v1/identity-providers/{pid}", json=patch, headers=admin), 422, "ldap")
    down = _body(f"http://127.0.0.1:{free_port()}", name="down")
    resp = await client.post("/api/v1/identity-providers", json=down, headers=admin)
    assert resp.status_code == 201, resp.text
    body = _problem(await client.get(f"/api/v1/auth/oidc/{resp.json()['id']}/login"), 503)
    assert "cannot be read" in body["detail"]

    # A provider of another kind or unknown id: 404; a deleted provider logs nobody in.
    _problem(await client.get(f"/api/v1/auth/oidc/{uuid.uuid4()}/login"), 404, "provider_id")
    assert (await client.delete(f"/api/v1/identity-providers/{pid}", headers=admin)).status_code == 204
    _problem(await client.get(f"/api/v1/auth/oidc/{pid}/login"), 404)


def _signed(key: RSAKey, **claims: Any) -> str:
    now = int(time.time())
    base = {"iss": "https://idp.test", "aud": "rpa", "sub": "u1", "iat": now, "exp": now + 300, "nonce": "n1"}
    return jwt.encode({"alg": "RS256", "kid": key.kid}, {**base, **claims}, key)


@pytest.mark.parametrize(
    "claims, reason",
    [
        ({}, None),
        ({"aud": "another-client"}, "aud"),
        ({"iss": "https://evil.test"}, "iss"),
        ({"nonce": "n2"}, "nonce"),
        ({"exp": int(time.time()) - 3600}, "exp"),
    ],
)
def test_id_token_checks(claims: dict[str, Any], reason: str | None) -> None:
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    jwks = KeySet([key]).as_dict(private=False)
    token = _signed(key, **claims)
    kwargs: dict[str, Any] = {"issuer": "https://idp.test", "client_id": "rpa", "nonce": "n1"}
    if reason is None:
        assert validate_id_token(token, jwks, **kwargs)["sub"] == "u1"
        # The same token checked against another key: a bad signature.
        other = KeySet([RSAKey.generate_key(2048, parameters={"kid": "k1"})]).as_dict(private=False)
        with pytest.raises(IdTokenInvalid, match="signature"):
            validate_id_token(token, other, **kwargs)
        with pytest.raises(IdTokenInvalid, match="signature"):
            validate_id_token(token[:-4] + "AAAA", jwks, **kwargs)
    else:
        with pytest.raises(IdTokenInvalid, match=reason):
            validate_id_token(token, jwks, **kwargs)
