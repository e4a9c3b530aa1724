"""Request dependencies: the service context, sessions, the caller (principal) and permissions.

Writes go through ``Tx.run``: the edge that commits, and re-runs the whole transaction on
connection loss or deadlock. Services and repositories only ``flush``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import jwt
import sqlalchemy as sa
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.grants import SESSION_KEY as GRANTS_SESSION_KEY
from rpa_api.grants import GrantCache, KeyGrant, UserGrant
from rpa_common.db.uow import run_in_transaction
from rpa_common.errors import Forbidden, Unauthorized
from rpa_common.models import ApiKey, Role, RoleFolder, RolePermission, User, UserRole
from rpa_common.models.enums import ActorType, PermissionAction, PermissionObject
from rpa_common.nats import subjects
from rpa_common.nats.messages import AuthChanged
from rpa_common.security import decode_access_token, key_matches, split_key
from rpa_common.service import ServiceContext

T = TypeVar("T")

API_KEY_KIND = "rpak"
TOKEN_URL = "/api/v1/auth/token"  # noqa: S105 - a path


def get_ctx(request: Request) -> ServiceContext:
    ctx: ServiceContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ServiceContext, Depends(get_ctx)]


async def get_session(ctx: Ctx) -> AsyncIterator[AsyncSession]:
    """A read session: nothing is committed through it."""
    async with ctx.sessions() as session:
        yield session


Session = Annotated[AsyncSession, Depends(get_session)]


def get_grants(request: Request) -> GrantCache:
    grants: GrantCache = request.app.state.grants
    return grants


@dataclass
class Tx:
    """Runs a unit of work for a request: commit on success, bounded re-run on transient errors.

    A unit of work that changed who may do what (users, roles, folders, keys) drops the cached
    grants of that account here and, through NATS, on every other replica, once it has committed.
    """

    ctx: ServiceContext
    grants: GrantCache | None = None

    async def run_aware(self, work: Callable[[AsyncSession, bool], Awaitable[T]]) -> T:
        """``run``, telling ``work`` whether this is a re-run: after a commit that failed with a lost
        connection, the first run may in fact have committed (e.g. a delete finds its row gone)."""
        runs = 0

        async def counted(session: AsyncSession) -> T:
            nonlocal runs
            runs += 1
            return await work(session, runs > 1)

        return await self.run(counted)

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        changed: set[uuid.UUID] = set()

        async def tracked(session: AsyncSession) -> T:
            session.info.pop(GRANTS_SESSION_KEY, None)
            result = await work(session)
            changed.update(session.info.get(GRANTS_SESSION_KEY, ()))
            return result

        result = await run_in_transaction(
            self.ctx.sessions, tracked, attempts=self.ctx.settings.db_retry_attempts
        )
        for account_id in changed:
            if self.grants is not None:
                self.grants.invalidate(account_id)
            await self.ctx.publish(subjects.AUTH_CHANGED, AuthChanged(account_id=account_id).encode())
        return result


def get_tx(ctx: Ctx, request: Request) -> Tx:
    return Tx(ctx, get_grants(request))


Transaction = Annotated[Tx, Depends(get_tx)]


@dataclass
class Principal:
    """Who is calling: a user (by access token) or a user's API key, with the union of their roles."""

    account_id: uuid.UUID
    user_id: uuid.UUID
    username: str
    actor_type: ActorType
    permissions: set[tuple[PermissionObject, PermissionAction]] = field(default_factory=set)
    all_folders: bool = False
    folder_ids: set[uuid.UUID] = field(default_factory=set)
    api_key_id: uuid.UUID | None = None
    client_address: str | None = None
    user_agent: str | None = None

    def can(self, obj: PermissionObject, action: PermissionAction) -> bool:
        return (obj, action) in self.permissions

    def require(self, obj: PermissionObject, action: PermissionAction) -> None:
        if not self.can(obj, action):
            raise Forbidden(f"missing permission {obj.value}:{action.value}")

    def folder_clause(self, column: Any) -> sa.ColumnElement[bool]:
        """Rows this principal may see, by their folder column."""
        if self.all_folders:
            return sa.true()
        if not self.folder_ids:
            return sa.false()
        return column.in_(self.folder_ids)

    def may_use_folder(self, folder_id: uuid.UUID | None) -> bool:
        return self.all_folders or (folder_id is not None and folder_id in self.folder_ids)


# Two schemes read the same ``Authorization: Bearer`` header. Both appear in the OpenAPI document as
# alternatives, so Swagger UI's Authorize button can log in with a password (OAuth2 password flow
# against TOKEN_URL) or take a pasted API key.
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An access token from /api/v1/auth/token, or an API key",
)
_oauth2 = OAuth2PasswordBearer(
    tokenUrl=TOKEN_URL,
    auto_error=False,
    scheme_name="password",
    description="Log in with a username and password",
)


_NO_KEY_HASH = "0" * 64


async def _load_grant(session: AsyncSession, user: User) -> UserGrant:
    rows = (
        await session.execute(
            sa.select(Role.id, Role.all_folders, RolePermission.object, RolePermission.action)
            .join(UserRole, UserRole.role_id == Role.id)
            .outerjoin(RolePermission, RolePermission.role_id == Role.id)
            .where(UserRole.user_id == user.id)
        )
    ).all()
    permissions = frozenset((r.object, r.action) for r in rows if r.object is not None)
    all_folders = any(r.all_folders for r in rows)
    folder_ids: frozenset[uuid.UUID] = frozenset()
    role_ids = {r.id for r in rows}
    if not all_folders and role_ids:
        folder_rows = await session.execute(
            sa.select(RoleFolder.folder_id).where(RoleFolder.role_id.in_(role_ids))
        )
        folder_ids = frozenset(r[0] for r in folder_rows)
    return UserGrant(
        account_id=user.account_id,
        user_id=user.id,
        username=user.username,
        token_version=user.token_version,
        is_active=user.is_active,
        permissions=permissions,
        all_folders=all_folders,
        folder_ids=folder_ids,
    )


async def _user_grant(ctx: ServiceContext, grants: GrantCache, user_id: uuid.UUID) -> UserGrant | None:
    grant = grants.user(user_id)
    if grant is None:
        async with ctx.sessions() as session:
            user = await session.get(User, user_id)
            if user is None:
                return None
            grant = await _load_grant(session, user)
        grants.put_user(grant)
    return grant


async def _key_grant(ctx: ServiceContext, grants: GrantCache, prefix: str) -> KeyGrant | None:
    grant = grants.key(prefix)
    if grant is None:
        async with ctx.sessions() as session:
            key = (
                await session.execute(sa.select(ApiKey).where(ApiKey.prefix == prefix))
            ).scalar_one_or_none()
        if key is None:
            return None
        grant = KeyGrant(
            id=key.id,
            account_id=key.account_id,
            user_id=key.user_id,
            key_hash=key.key_hash,
            revoked=key.revoked_at is not None,
            expires_at=key.expires_at,
            last_used_at=key.last_used_at,
        )
        grants.put_key(prefix, grant)
    return grant


async def authenticate(
    request: Request,
    ctx: Ctx,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    oauth2_token: Annotated[str | None, Depends(_oauth2)],
) -> Principal:
    token = credentials.credentials if credentials is not None else oauth2_token
    if not token:
        raise Unauthorized("missing bearer token")
    now = datetime.now(UTC)
    grants = get_grants(request)
    await grants.subscribe(ctx.nc)
    api_key_id: uuid.UUID | None = None
    key_last_used: datetime | None = None
    prefix = split_key(token, API_KEY_KIND)
    if prefix is not None:
        key = await _key_grant(ctx, grants, prefix)
        # The hash is checked even for an unknown prefix, so a miss and a wrong secret take the same time.
        if (
            not key_matches(token, key.key_hash if key is not None else _NO_KEY_HASH)
            or key is None
            or key.revoked
            or (key.expires_at is not None and key.expires_at <= now)
        ):
            raise Unauthorized("invalid, revoked or expired API key")
        grant = await _user_grant(ctx, grants, key.user_id)
        if grant is not None and grant.account_id != key.account_id:
            raise Unauthorized("invalid, revoked or expired API key")
        actor = ActorType.API_KEY
        api_key_id = key.id
        key_last_used = key.last_used_at
    else:
        try:
            claims = decode_access_token(ctx.settings, token)
            user_id = uuid.UUID(claims["sub"])
            account_id = uuid.UUID(claims["acc"])
        except (jwt.PyJWTError, ValueError, KeyError) as exc:
            raise Unauthorized(f"invalid access token: {exc}") from None
        grant = await _user_grant(ctx, grants, user_id)
        if grant is None or grant.account_id != account_id or grant.token_version != claims.get("ver"):
            raise Unauthorized("access token is no longer valid")
        actor = ActorType.USER
    if grant is None or not grant.is_active:
        raise Unauthorized("user is disabled")
    principal = Principal(
        account_id=grant.account_id,
        user_id=grant.user_id,
        username=grant.username,
        actor_type=actor,
        permissions=set(grant.permissions),
        all_folders=grant.all_folders,
        folder_ids=set(grant.folder_ids),
        api_key_id=api_key_id,
        client_address=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )
    if api_key_id is not None and (key_last_used is None or now - key_last_used > KEY_USE_RESOLUTION):
        await _mark_key_used(ctx, api_key_id, now)
        assert prefix is not None and key is not None
        grants.put_key(prefix, KeyGrant(**{**key.__dict__, "last_used_at": now}))
    return principal


# ``last_used_at`` of an API key is kept to this resolution: one write per key per minute at most.
KEY_USE_RESOLUTION = timedelta(minutes=1)


async def _mark_key_used(ctx: ServiceContext, key_id: uuid.UUID, now: datetime) -> None:
    async def work(session: AsyncSession) -> None:
        # Guarded: concurrent requests with the same key write once, and never move the time back.
        await session.execute(
            sa.update(ApiKey)
            .where(
                ApiKey.id == key_id,
                sa.or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - KEY_USE_RESOLUTION),
            )
            .values(last_used_at=now)
        )

    await run_in_transaction(ctx.sessions, work, attempts=ctx.settings.db_retry_attempts)


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]


def require(obj: PermissionObject, action: PermissionAction) -> Callable[..., Awaitable[Principal]]:
    """Dependency: the caller, who must hold ``obj:action`` (403 otherwise)."""

    async def dependency(principal: CurrentPrincipal) -> Principal:
        principal.require(obj, action)
        return principal

    dependency.__name__ = f"require_{obj.value}_{action.value}"
    # Read by rpa_api.openapi: the operation declares 403 and names the permission it needs.
    dependency.permission = f"{obj.value}:{action.value}"  # type: ignore[attr-defined]
    return dependency
