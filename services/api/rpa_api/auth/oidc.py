"""Logging in through an account's OpenID provider: authorization code flow with PKCE (issue 12).

1. ``GET /auth/oidc/{provider_id}/login`` keeps a new login (state hashed, nonce, PKCE verifier
   encrypted) in ``oidc_login``, puts the state in a short-lived HttpOnly cookie that binds the login
   to this browser, and redirects to the provider's authorization endpoint with ``state``, ``nonce``
   and an S256 ``code_challenge``.
2. ``GET /auth/oidc/callback`` (the one redirect URI to register at the provider) takes the state
   once (a replayed or foreign state is a 400), trades the code and the verifier for the provider's
   tokens (authlib), checks the ID token (signature by the provider's JWKS, issuer, audience, nonce,
   expiry), finds or creates the user with the roles mapped from the groups claim, and redirects to
   the provider's ``app_url`` with a one-time hand-off code in the URL fragment.
3. ``POST /auth/oidc/token`` trades that code, once and within two minutes, for the same token pair
   the password login gives. No access or refresh token ever travels in a URL.
"""

from __future__ import annotations

import hmac
import secrets
import time
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import httpx
import sqlalchemy as sa
import structlog
from authlib.integrations.base_client.errors import OAuthError
from authlib.oidc.core import CodeIDToken
from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.auth import external, service
from rpa_api.auth.router import _client
from rpa_api.auth.schemas import TokenOut
from rpa_api.deps import Transaction
from rpa_api.identity import schemas as idp_schemas
from rpa_api.identity import service as idp
from rpa_api.kit import audit
from rpa_common.errors import BadRequest, Forbidden, NotFound, ServiceUnavailable, Unauthorized
from rpa_common.models import Account, IdentityProvider, OidcLogin, RefreshToken, User
from rpa_common.security import Encryptor, hash_key

with warnings.catch_warnings():
    # authlib 1.9 warns that it would rather use the httpx2 fork; it works with httpx, which the
    # whole project uses. Without this the warning would be printed at every start of the API.
    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client

log = structlog.get_logger(__name__)
router = APIRouter()

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
STATE_COOKIE = "rpa_oidc_state"
COOKIE_PATH = "/api/v1/auth/oidc"
LOGIN_TTL_S = 600  # from the redirect to the callback: the user's time at the provider's login page
HANDOFF_TTL_S = 120  # from the callback to the web application's POST /auth/oidc/token
DISCOVERY_TTL_S = 300
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
_discovery: dict[str, tuple[float, dict[str, Any]]] = {}


class OidcCodeIn(BaseModel):
    """The one-time code from ``app_url#oidc_code=...``."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=200)


class IdTokenInvalid(Exception):
    """The provider's ID token failed a check; ``reason`` says which (never the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def validate_id_token(
    id_token: str, jwks: dict[str, Any], *, issuer: str, client_id: str, nonce: str, leeway_s: int = 60
) -> dict[str, Any]:
    """The ID token's claims once its signature (one of ``jwks``' keys), issuer, audience, nonce and
    times are right; ``IdTokenInvalid`` otherwise."""
    try:
        token = jwt.decode(id_token, KeySet.import_key_set(jwks), algorithms=ALGORITHMS)  # type: ignore[arg-type]
    except (JoseError, ValueError) as exc:
        raise IdTokenInvalid(f"signature: {type(exc).__name__}") from None
    claims = CodeIDToken(
        token.claims,
        token.header,
        options={"iss": {"essential": True, "value": issuer}, "aud": {"essential": True, "value": client_id}},
        params={"nonce": nonce, "client_id": client_id},
    )
    try:
        claims.validate(leeway=leeway_s)
    except JoseError as exc:
        raise IdTokenInvalid(f"{type(exc).__name__}: {exc}") from None
    return dict(claims)


def _cfg(provider: IdentityProvider) -> idp_schemas.OidcConfig:
    return idp_schemas.OidcConfig.model_validate(provider.config)


async def _get_json(url: str, timeout_s: int, what: str) -> dict[str, Any]:
    try:
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as http:
            resp = await http.get(url, headers={"Accept": "application/json"})
            resp.raise_for_status()
            doc = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("auth.oidc_provider_unreachable", url=url, what=what, error=type(exc).__name__)
        raise ServiceUnavailable(
            f"the OpenID provider's {what} cannot be read; try again later", retry_after_s=30
        ) from None
    if not isinstance(doc, dict):
        raise ServiceUnavailable(f"the OpenID provider's {what} is not a JSON object", retry_after_s=30)
    return doc


async def discover(cfg: idp_schemas.OidcConfig) -> dict[str, Any]:
    """The provider's metadata (cached a few minutes per issuer), its issuer checked."""
    hit = _discovery.get(cfg.issuer)
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    url = cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
    doc = await _get_json(url, cfg.timeout_s, "discovery document")
    if doc.get("issuer") != cfg.issuer or not all(
        isinstance(doc.get(k), str) for k in ("authorization_endpoint", "token_endpoint", "jwks_uri")
    ):
        log.warning("auth.oidc_bad_discovery", issuer=cfg.issuer, announced=str(doc.get("issuer"))[:300])
        raise ServiceUnavailable(
            "the OpenID provider's discovery document does not match its issuer", retry_after_s=30
        )
    _discovery[cfg.issuer] = (time.monotonic() + DISCOVERY_TTL_S, doc)
    return doc


def _oauth_client(
    cfg: idp_schemas.OidcConfig, client_secret: str | None, redirect_uri: str
) -> AsyncOAuth2Client:
    return AsyncOAuth2Client(
        client_id=cfg.client_id,
        client_secret=client_secret,
        token_endpoint_auth_method="client_secret_basic" if client_secret else "none",
        scope=" ".join(cfg.scopes),
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        timeout=cfg.timeout_s,
    )


def _seal(settings: Any, login_id: uuid.UUID, verifier: str) -> bytes:
    return Encryptor.from_settings(settings).encrypt(verifier, context=f"oidc-login:{login_id}")


def _open(settings: Any, row: OidcLogin) -> str:
    return Encryptor.from_settings(settings).decrypt(row.verifier_encrypted, context=f"oidc-login:{row.id}")


async def _active_provider(session: AsyncSession, provider_id: uuid.UUID) -> IdentityProvider:
    row = (
        await session.execute(
            sa.select(IdentityProvider)
            .join(Account, Account.id == IdentityProvider.account_id)
            .where(
                IdentityProvider.id == provider_id,
                IdentityProvider.kind == "oidc",
                IdentityProvider.is_active.is_(True),
                Account.is_active.is_(True),
            )
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound("no such OpenID identity provider", field="provider_id")
    return row


@router.get(
    "/auth/oidc/{provider_id:uuid}/login",
    status_code=302,
    summary="Start a login at an account's OpenID provider (redirects the browser there)",
    response_description="A redirect to the provider's authorization endpoint",
    responses={302: {"description": "To the provider"}, 404: _PROBLEM, 503: _PROBLEM},
)
async def oidc_login(provider_id: uuid.UUID, request: Request, tx: Transaction) -> RedirectResponse:
    settings = tx.ctx.settings
    provider = await tx.read(lambda session: _active_provider(session, provider_id))
    cfg = _cfg(provider)
    meta = await discover(cfg)
    state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(64)
    redirect_uri = cfg.redirect_uri or str(request.url_for("oidc_callback"))
    async with _oauth_client(cfg, None, redirect_uri) as oauth:
        url, _ = oauth.create_authorization_url(
            meta["authorization_endpoint"], state=state, nonce=nonce, code_verifier=verifier
        )
    login_id = uuid.uuid4()
    now = datetime.now(UTC)

    async def work(session: AsyncSession) -> None:
        # Logins never finished (or long redeemed) go as new ones come: the table stays small.
        await session.execute(sa.delete(OidcLogin).where(OidcLogin.expires_at < now - timedelta(hours=1)))
        if await session.get(OidcLogin, login_id) is None:
            session.add(
                OidcLogin(
                    id=login_id,
                    provider_id=provider.id,
                    state_hash=hash_key(state),
                    nonce=nonce,
                    verifier_encrypted=_seal(settings, login_id, verifier),
                    redirect_uri=redirect_uri,
                    created_at=now,
                    expires_at=now + timedelta(seconds=LOGIN_TTL_S),
                )
            )

    await tx.run(work)
    resp = RedirectResponse(url, status_code=302)
    resp.set_cookie(
        STATE_COOKIE,
        state,
        max_age=LOGIN_TTL_S,
        path=COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return resp


@router.get(
    "/auth/oidc/callback",
    status_code=302,
    summary="Where the OpenID provider sends the browser back (register this URL at the provider)",
    response_description="A redirect to the web application with a one-time code in the fragment",
    responses={
        302: {"description": "To the web application's app_url#oidc_code=..."},
        400: _PROBLEM,
        401: _PROBLEM,
        403: _PROBLEM,
        404: _PROBLEM,
        409: _PROBLEM,
        503: _PROBLEM,
    },
)
async def oidc_callback(
    request: Request,
    tx: Transaction,
    state: Annotated[str | None, Query(max_length=200)] = None,
    code: Annotated[str | None, Query(max_length=4000)] = None,
    error: Annotated[str | None, Query(max_length=200)] = None,
) -> RedirectResponse:
    settings = tx.ctx.settings
    client = _client(request)
    if not state:
        raise BadRequest("the provider's answer has no state", field="state")
    cookie = request.cookies.get(STATE_COOKIE) or ""
    if not hmac.compare_digest(cookie.encode(), state.encode()):
        # A state this browser did not start: a forged callback (login CSRF) or another browser's.
        raise BadRequest("the state does not belong to this browser's login; log in again", field="state")
    now = datetime.now(UTC)
    state_hash = hash_key(state)

    async def take(session: AsyncSession) -> tuple[OidcLogin, IdentityProvider]:
        taken = await session.execute(
            sa.update(OidcLogin)
            .where(
                OidcLogin.state_hash == state_hash,
                OidcLogin.callback_at.is_(None),
                OidcLogin.expires_at > now,
            )
            .values(callback_at=now)
        )
        row = (
            await session.execute(sa.select(OidcLogin).where(OidcLogin.state_hash == state_hash))
        ).scalar_one_or_none()
        if row is None or (taken.rowcount != 1 and row.callback_at != now):  # type: ignore[attr-defined]
            raise BadRequest("this login is unknown, expired or already used; log in again", field="state")
        return row, await _active_provider(session, row.provider_id)

    login, provider = await tx.run(take)
    if error:
        log.info("auth.oidc_login_failed", reason=f"provider error {error}", provider=str(provider.id))
        raise BadRequest(f"the OpenID provider refused the login: {error}", field="error")
    if not code:
        raise BadRequest("the provider's answer has no code", field="code")
    cfg = _cfg(provider)
    meta = await discover(cfg)
    async with _oauth_client(cfg, idp.open_secret(settings, provider), login.redirect_uri) as oauth:
        try:
            tokens = await oauth.fetch_token(
                meta["token_endpoint"],
                grant_type="authorization_code",
                code=code,
                code_verifier=_open(settings, login),
            )
        except OAuthError as exc:
            log.info(
                "auth.oidc_login_failed", reason=f"token endpoint: {exc.error}", provider=str(provider.id)
            )
            raise BadRequest(
                f"the OpenID provider refused the authorization code ({exc.error})", field="code"
            ) from None
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("auth.oidc_provider_unreachable", what="token endpoint", error=type(exc).__name__)
            raise ServiceUnavailable(
                "the OpenID provider's token endpoint cannot be reached; try again later", retry_after_s=30
            ) from None
    id_token = tokens.get("id_token")
    if not isinstance(id_token, str):
        raise Unauthorized("the OpenID provider returned no ID token (is the openid scope granted?)")
    jwks = await _get_json(meta["jwks_uri"], cfg.timeout_s, "signing keys")
    try:
        claims = validate_id_token(
            id_token, jwks, issuer=cfg.issuer, client_id=cfg.client_id, nonce=login.nonce
        )
    except IdTokenInvalid as exc:
        log.info("auth.oidc_login_failed", reason=f"id token {exc.reason}", provider=str(provider.id))
        raise Unauthorized(f"the OpenID provider's ID token is not valid ({exc.reason})") from None

    username = claims.get(cfg.username_claim) or claims.get("sub")
    if not isinstance(username, str) or not username or len(username) > 150:
        raise Unauthorized(f"the ID token has no usable {cfg.username_claim} or sub claim")
    raw_groups = claims.get(cfg.groups_claim) or []
    groups = [g for g in raw_groups if isinstance(g, str)] if isinstance(raw_groups, list) else []
    email, name = claims.get("email"), claims.get("name")
    handoff = secrets.token_urlsafe(32)

    async def succeed(session: AsyncSession) -> bool:
        user, principal = await external.link_user(
            session,
            provider,
            username=username,
            display_name=name if isinstance(name, str) and name else username,
            email=email if isinstance(email, str) else None,
            groups=groups,
            client=client,
            via="oidc",
        )
        if not user.is_active:
            audit.record(
                session,
                principal,
                "login_failed",
                "user",
                user.id,
                {"reason": "disabled", "via": "oidc", "provider": str(provider.id)},
                kind="auth",
            )
            return False
        await session.execute(
            sa.update(OidcLogin)
            .where(OidcLogin.id == login.id)
            .values(
                user_id=user.id,
                handoff_hash=hash_key(handoff),
                expires_at=datetime.now(UTC) + timedelta(seconds=HANDOFF_TTL_S),
            )
        )
        return True

    if not await tx.run(succeed):
        log.info("auth.oidc_login_failed", reason="disabled", provider=str(provider.id))
        raise Forbidden("this user is disabled in the orchestrator")
    resp = RedirectResponse(f"{cfg.app_url}#oidc_code={handoff}", status_code=302)
    resp.delete_cookie(STATE_COOKIE, path=COOKIE_PATH)
    return resp


@router.post(
    "/auth/oidc/token",
    response_model=TokenOut,
    summary="Trade the one-time code of an OpenID login (app_url#oidc_code=...) for a token pair",
    responses={400: _PROBLEM, 403: _PROBLEM},
)
async def oidc_token(request: Request, body: OidcCodeIn, tx: Transaction) -> TokenOut:
    ctx = tx.ctx
    client = _client(request)
    handoff_hash = hash_key(body.code)
    token_id, family_id, raw = uuid.uuid4(), uuid.uuid4(), service._new_refresh_token()

    async def work(session: AsyncSession) -> tuple[User, int]:
        now = datetime.now(UTC)
        row = (
            await session.execute(sa.select(OidcLogin).where(OidcLogin.handoff_hash == handoff_hash))
        ).scalar_one_or_none()
        done = await session.get(RefreshToken, token_id)  # a re-run after a commit that did happen
        if done is None:
            spent = await session.execute(
                sa.update(OidcLogin)
                .where(
                    OidcLogin.handoff_hash == handoff_hash,
                    OidcLogin.redeemed_at.is_(None),
                    OidcLogin.expires_at > now,
                )
                .values(redeemed_at=now)
            )
            if row is None or spent.rowcount != 1:  # type: ignore[attr-defined]
                raise BadRequest("this code is unknown, expired or already used; log in again", field="code")
        assert row is not None and row.user_id is not None
        user = (
            await session.execute(
                sa.select(User)
                .join(Account, Account.id == User.account_id)
                .where(User.id == row.user_id, Account.is_active.is_(True))
            )
        ).scalar_one_or_none()
        if user is None or not user.is_active:
            raise Forbidden("this user is disabled in the orchestrator")
        if done is None:
            session.add(
                service.refresh_token_row(
                    ctx.settings, token_id=token_id, user_id=user.id, family_id=family_id, raw=raw, now=now
                )
            )
            user.last_login_at = now
            audit.record(
                session,
                service._user_principal(user, client),
                "login",
                "user",
                user.id,
                {"via": "oidc", "provider": str(row.provider_id)},
                kind="auth",
            )
        await session.flush()
        version = (
            await session.execute(sa.select(User.token_version).where(User.id == user.id))
        ).scalar_one()
        return user, int(version)

    user, version = await tx.run(work)
    return service._token_pair(ctx, user, version, raw)
