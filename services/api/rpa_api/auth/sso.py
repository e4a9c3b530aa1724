"""Logging in through an account's LDAP directory (issue 12), kept apart from the password login.

``POST /auth/ldap/{provider_id}/token`` takes the same form as ``/auth/token``. The user's DN is
searched with the service account, then bound with the given password; the first login creates the
orchestrator user (or links the account's user of the same name), and every login sets the user's
roles from their directory groups through the provider's ``group_roles``. A refusal is the same 401
as a wrong password and counts in the same login throttle; an unreachable directory is a 503.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import sqlalchemy as sa
import structlog
from fastapi import APIRouter, Form, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.auth import external, service, throttle
from rpa_api.auth.router import _client
from rpa_api.auth.schemas import TokenOut
from rpa_api.deps import Transaction
from rpa_api.identity import schemas as idp_schemas
from rpa_api.identity import service as idp
from rpa_api.kit import audit
from rpa_common.errors import NotFound, Unauthorized
from rpa_common.models import Account, IdentityProvider, RefreshToken, User
from rpa_common.service import problem

log = structlog.get_logger(__name__)
router = APIRouter()

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


@router.post(
    "/auth/ldap/{provider_id:uuid}/token",
    response_model=TokenOut,
    summary="Log in with a directory username and password (an account's LDAP identity provider)",
    responses={
        401: _PROBLEM,
        404: _PROBLEM,
        409: _PROBLEM,
        429: {**_PROBLEM, "description": "Too many failed logins (see Retry-After)"},
        503: {**_PROBLEM, "description": "The directory cannot be reached"},
    },
)
async def ldap_token(
    provider_id: uuid.UUID,
    request: Request,
    username: Annotated[str, Form(min_length=1, max_length=150)],
    password: Annotated[str, Form(min_length=1, max_length=1024)],
    tx: Transaction,
) -> TokenOut | JSONResponse:
    try:
        return await ldap_login(tx, provider_id, username, password, _client(request))
    except service.LoginThrottled as exc:
        resp = problem(exc.status, exc.title, exc.detail, instance=request.url.path, **exc.extra)
        resp.headers["Retry-After"] = str(exc.retry_after_s)
        return resp


async def ldap_login(
    tx: Any, provider_id: uuid.UUID, username: str, password: str, client: service.Client
) -> TokenOut:
    ctx = tx.ctx
    settings = ctx.settings
    _, addr_key = keys = throttle.keys_for(settings, username, client.address)

    async def find(session: AsyncSession) -> tuple[IdentityProvider, str | None]:
        wait = await throttle.blocked_for(session, keys)
        if wait > 0:
            raise service.LoginThrottled(wait)
        row = (
            await session.execute(
                sa.select(IdentityProvider)
                .join(Account, Account.id == IdentityProvider.account_id)
                .where(
                    IdentityProvider.id == provider_id,
                    IdentityProvider.is_active.is_(True),
                    Account.is_active.is_(True),
                )
            )
        ).scalar_one_or_none()
        if row is None:
            raise NotFound("no such identity provider", field="provider_id")
        return row, idp.open_secret(settings, row)

    provider, bind_password = await tx.read(find)
    cfg = idp_schemas.LdapConfig.model_validate(provider.config)
    try:
        found = await asyncio.to_thread(idp.ldap_authenticate, cfg, bind_password, username, password)
    except idp.DirectoryRefused as refused:
        reason = refused.reason

        async def fail(session: AsyncSession) -> None:
            await throttle.record_failure(session, settings, keys)

        await tx.run(fail)
        log.info("auth.ldap_login_failed", reason=reason, provider=str(provider.id), client=client.address)
        raise Unauthorized(service.BAD_CREDENTIALS) from None

    token_id, family_id, raw = uuid.uuid4(), uuid.uuid4(), service._new_refresh_token()
    now = datetime.now(UTC)

    async def succeed(session: AsyncSession) -> tuple[User, int]:
        user, principal = await external.link_user(
            session,
            provider,
            username=username,
            display_name=found.display_name,
            email=found.email,
            groups=found.groups,
            client=client,
            via="ldap",
        )
        if not user.is_active:
            return user, -1
        if await session.get(RefreshToken, token_id) is None:
            session.add(
                service.refresh_token_row(
                    settings, token_id=token_id, user_id=user.id, family_id=family_id, raw=raw, now=now
                )
            )
        user.last_login_at = now
        await throttle.reset(session, addr_key)
        audit.record(session, principal, "login", "user", user.id, {"via": "ldap"}, kind="auth")
        await session.flush()
        version = (
            await session.execute(sa.select(User.token_version).where(User.id == user.id))
        ).scalar_one()
        return user, int(version)

    user, version = await tx.run(succeed)
    if version < 0:

        async def fail_disabled(session: AsyncSession) -> None:
            await throttle.record_failure(session, settings, keys)

        await tx.run(fail_disabled)
        raise Unauthorized(service.BAD_CREDENTIALS)
    return service._token_pair(ctx, user, version, raw)
