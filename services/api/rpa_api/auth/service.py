"""Logins, refresh-token rotation, revocation, "log out everywhere", and API keys.

Refresh tokens are opaque random strings stored as a SHA-256 hash. Each refresh spends the token it
was given and returns a new one of the same *family*; presenting a spent token again means a copy
is in someone else's hands, so the whole family is revoked (and the caller gets 401).
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.auth import throttle
from rpa_api.auth.schemas import ApiKeyCreate, TokenOut
from rpa_api.deps import API_KEY_KIND, Principal, Tx
from rpa_api.kit import audit
from rpa_common.errors import NotFound, TooManyRequests, Unauthorized, Unprocessable
from rpa_common.models import Account, ApiKey, RefreshToken, User
from rpa_common.models.enums import ActorType
from rpa_common.security import hash_key, issue_access_token, make_key, verify_password
from rpa_common.service import ServiceContext
from rpa_common.settings import Settings

log = structlog.get_logger(__name__)

BAD_CREDENTIALS = "wrong username or password"


class LoginThrottled(TooManyRequests):
    """Too many failed logins; ``retry_after_s`` goes to the ``Retry-After`` header."""

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = max(1, int(retry_after_s + 0.999))
        super().__init__(
            f"too many failed logins; try again in {self.retry_after_s} s", retry_after=self.retry_after_s
        )


@dataclass(frozen=True)
class Client:
    """Where a request comes from, for the throttle and the audit trail."""

    address: str | None
    user_agent: str | None


def _user_principal(user: User, client: Client) -> Principal:
    """The audit actor for an event done by a user who is not (yet) authenticated by a token."""
    return Principal(
        account_id=user.account_id,
        user_id=user.id,
        username=user.username,
        actor_type=ActorType.USER,
        client_address=client.address,
        user_agent=client.user_agent,
    )


def _new_refresh_token() -> str:
    return secrets.token_urlsafe(48)


def refresh_token_row(
    settings: Settings,
    *,
    token_id: uuid.UUID,
    user_id: uuid.UUID,
    family_id: uuid.UUID,
    raw: str,
    now: datetime,
) -> RefreshToken:
    """The stored form of a new refresh token (its hash, never the token): every login path's."""
    return RefreshToken(
        id=token_id,
        user_id=user_id,
        family_id=family_id,
        token_hash=hash_key(raw),
        created_at=now,
        expires_at=now + timedelta(seconds=settings.refresh_token_ttl_s),
    )


def _token_pair(ctx: ServiceContext, user: User, token_version: int, refresh_token: str) -> TokenOut:
    access = issue_access_token(
        ctx.settings, user_id=user.id, account_id=user.account_id, token_version=token_version
    )
    return TokenOut(
        access_token=access, expires_in=ctx.settings.access_token_ttl_s, refresh_token=refresh_token
    )


# Login ---------------------------------------------------------------------------------------------


async def login(ctx: ServiceContext, tx: Tx, username: str, password: str, client: Client) -> TokenOut:
    """A token pair for the right password; 401 otherwise, 429 while throttled.

    An unknown user, a wrong password, a disabled user or account all give the same 401 after the
    same work (a password hash is checked in every case).
    """
    settings = ctx.settings
    # The user key is only counted (see throttle): a success resets the user+address key.
    _, addr_key = keys = throttle.keys_for(settings, username, client.address)

    async def find(session: AsyncSession) -> User | None:
        wait = await throttle.blocked_for(session, keys)
        if wait > 0:
            raise LoginThrottled(wait)
        found: User | None = (
            await session.execute(
                sa.select(User)
                .join(Account, Account.id == User.account_id)
                .where(User.username == username, Account.is_active.is_(True))
            )
        ).scalar_one_or_none()
        return found

    user = await tx.read(find)
    # argon2 is CPU-bound: keep it off the event loop.
    ok = await asyncio.to_thread(verify_password, user.password_hash if user else None, password)
    if not ok or user is None or not user.is_active:
        failed_user = user

        async def fail(session: AsyncSession) -> None:
            await throttle.record_failure(session, settings, keys)
            if failed_user is not None:
                audit.record(
                    session,
                    _user_principal(failed_user, client),
                    "login_failed",
                    "user",
                    failed_user.id,
                    {"reason": "disabled" if ok else "wrong password"},
                    kind="auth",
                )

        await tx.run(fail)
        if user is None:
            # No account to file an audit record in; the log keeps the attempt (never the password).
            log.info("auth.login_failed", reason="unknown user", client=client.address)
        raise Unauthorized(BAD_CREDENTIALS)

    token_id, family_id, raw = uuid.uuid4(), uuid.uuid4(), _new_refresh_token()
    now = datetime.now(UTC)
    found = user

    async def succeed(session: AsyncSession) -> int:
        if await session.get(RefreshToken, token_id) is None:  # else: a re-run after a lost commit
            session.add(
                refresh_token_row(
                    settings, token_id=token_id, user_id=found.id, family_id=family_id, raw=raw, now=now
                )
            )
            await session.execute(sa.update(User).where(User.id == found.id).values(last_login_at=now))
            await throttle.reset(session, addr_key)
            audit.record(session, _user_principal(found, client), "login", "user", found.id, kind="auth")
            await session.flush()
        version = (
            await session.execute(sa.select(User.token_version).where(User.id == found.id))
        ).scalar_one()
        return int(version)

    version = await tx.run(succeed)
    return _token_pair(ctx, user, version, raw)


# Refresh tokens -----------------------------------------------------------------------------------


class RefreshOutcome(Enum):
    OK = "ok"
    INVALID = "invalid"
    REUSED = "reused"


async def refresh(ctx: ServiceContext, tx: Tx, raw: str, client: Client) -> TokenOut:
    """Spend ``raw`` for a new pair; a spent token presented again revokes its family (401)."""
    settings = ctx.settings
    new_id, new_raw = uuid.uuid4(), _new_refresh_token()
    given_hash = hash_key(raw)

    async def work(session: AsyncSession) -> tuple[RefreshOutcome, User | None, int]:
        now = datetime.now(UTC)
        done = await session.get(RefreshToken, new_id)
        if done is not None:  # a re-run after a commit that did happen
            user = await session.get(User, done.user_id)
            return RefreshOutcome.OK, user, user.token_version if user else 0
        row = (
            await session.execute(
                sa.select(RefreshToken).where(RefreshToken.token_hash == given_hash).with_for_update()
            )
        ).scalar_one_or_none()
        if row is None or row.revoked_at is not None:
            return RefreshOutcome.INVALID, None, 0
        user = await session.get(User, row.user_id)
        if row.used_at is not None:
            await _revoke_family(session, row.family_id, now)
            if user is not None:
                audit.record(
                    session,
                    _user_principal(user, client),
                    "refresh_token_reused",
                    "user",
                    user.id,
                    {"family_id": row.family_id, "revoked": "family"},
                    kind="auth",
                )
            return RefreshOutcome.REUSED, None, 0
        if row.expires_at <= now or user is None or not user.is_active:
            return RefreshOutcome.INVALID, None, 0
        account_active = (
            await session.execute(sa.select(Account.is_active).where(Account.id == user.account_id))
        ).scalar_one()
        if not account_active:
            return RefreshOutcome.INVALID, None, 0
        row.used_at = now
        session.add(
            refresh_token_row(
                settings, token_id=new_id, user_id=user.id, family_id=row.family_id, raw=new_raw, now=now
            )
        )
        audit.record(
            session,
            _user_principal(user, client),
            "refresh",
            "user",
            user.id,
            {"family_id": row.family_id},
            kind="auth",
        )
        await session.flush()
        return RefreshOutcome.OK, user, user.token_version

    outcome, user, version = await tx.run(work)
    if outcome is RefreshOutcome.REUSED:
        log.warning("auth.refresh_token_reused", client=client.address)
        raise Unauthorized("refresh token was already used; every token of its family is now revoked")
    if outcome is not RefreshOutcome.OK or user is None:
        raise Unauthorized("invalid, expired or revoked refresh token")
    return _token_pair(ctx, user, version, new_raw)


async def _revoke_family(session: AsyncSession, family_id: uuid.UUID, now: datetime) -> None:
    await session.execute(
        sa.update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )


async def revoke(tx: Tx, raw: str, client: Client) -> None:
    """Revoke a refresh token and its family. An unknown token is not an error (RFC 7009)."""
    given_hash = hash_key(raw)

    async def work(session: AsyncSession) -> None:
        row = (
            await session.execute(sa.select(RefreshToken).where(RefreshToken.token_hash == given_hash))
        ).scalar_one_or_none()
        if row is None:
            return
        await _revoke_family(session, row.family_id, datetime.now(UTC))
        user = await session.get(User, row.user_id)
        if user is not None:
            audit.record(
                session,
                _user_principal(user, client),
                "revoke_refresh_token",
                "user",
                user.id,
                {"family_id": row.family_id},
                kind="auth",
            )

    await tx.run(work)


async def logout_all(tx: Tx, principal: Principal) -> None:
    """Invalidate every access token (token version bump) and every refresh token of the caller."""

    async def work(session: AsyncSession) -> None:
        await session.execute(
            sa.update(User)
            .where(User.id == principal.user_id)
            .values(token_version=User.token_version + 1, updated_at=datetime.now(UTC))
        )
        await revoke_all_refresh_tokens(session, principal.user_id)
        audit.record(session, principal, "logout_all", "user", principal.user_id, kind="auth")

    await tx.run(work)


async def revoke_all_refresh_tokens(session: AsyncSession, user_id: uuid.UUID) -> None:
    await session.execute(
        sa.update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )


# API keys -----------------------------------------------------------------------------------------


async def create_api_key(tx: Tx, principal: Principal, body: ApiKeyCreate) -> tuple[ApiKey, str]:
    """A new key of the caller; the full key is returned here and never again."""
    if body.expires_at is not None and body.expires_at <= datetime.now(UTC):
        raise Unprocessable("expires_at must be in the future", field="expires_at")
    key_id = uuid.uuid4()
    key = make_key(API_KEY_KIND)

    async def work(session: AsyncSession) -> ApiKey:
        existing = await session.get(ApiKey, key_id)
        if existing is not None:  # a re-run after a commit that did happen
            return existing
        row = ApiKey(
            id=key_id,
            account_id=principal.account_id,
            user_id=principal.user_id,
            name=body.name,
            prefix=key.prefix,
            key_hash=key.hash,
            expires_at=body.expires_at,
        )
        session.add(row)
        await session.flush()
        audit.record(
            session,
            principal,
            "create",
            "api_key",
            key_id,
            {"name": body.name, "expires_at": body.expires_at},
        )
        return row

    return await tx.run(work), key.full


def api_keys_visible(principal: Principal, all_keys: bool) -> sa.ColumnElement[bool]:
    """The caller's own keys; with ``all_keys``, every key of the account (callers who manage users)."""
    clause = ApiKey.account_id == principal.account_id
    if not all_keys:
        clause = sa.and_(clause, ApiKey.user_id == principal.user_id)
    return clause


async def revoke_api_key(tx: Tx, principal: Principal, key_id: uuid.UUID, may_revoke_others: bool) -> ApiKey:
    async def work(session: AsyncSession) -> ApiKey:
        row = (
            await session.execute(
                sa.select(ApiKey).where(ApiKey.id == key_id, api_keys_visible(principal, may_revoke_others))
            )
        ).scalar_one_or_none()
        if row is None:
            raise NotFound.of("API key", key_id)
        if row.revoked_at is not None:  # revoking twice (a retried DELETE) changes nothing
            return row
        row.revoked_at = datetime.now(UTC)
        await session.flush()
        audit.record(session, principal, "revoke", "api_key", key_id, {"name": row.name})
        return row

    return await tx.run(work)
