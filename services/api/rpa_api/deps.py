"""Request dependencies: the service context, the unit of work, the caller (principal), permissions.

Every database access of a request goes through ``Tx``: writes through ``Tx.run``, reads through
``Tx.read``, authentication through the same ``run_db``. It is the edge that commits, re-runs the
whole transaction on the errors that mean "try again" (``rpa_common.db.uow``), and gives up after
``db_request_deadline_s`` with 503 + ``Retry-After``. Services and repositories only ``flush``.

Dependencies here are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a worker
thread, which costs more than most of them do.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import jwt
import sqlalchemy as sa
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.grants import SESSION_KEY as GRANTS_SESSION_KEY
from rpa_api.grants import AppGrant, GrantCache, KeyGrant, RoleBrief, UserGrant
from rpa_common.db.uow import is_unavailable, run_in_transaction
from rpa_common.errors import Forbidden, ServiceUnavailable, Unauthorized
from rpa_common.models import Account, ApiKey, ExternalApp, Role, RoleFolder, RolePermission, User, UserRole
from rpa_common.models.enums import ActorType, PermissionAction, PermissionObject
from rpa_common.nats import subjects
from rpa_common.nats.messages import AuthChanged
from rpa_common.security import decode_access_token, key_matches, split_key
from rpa_common.service import RETRY_AFTER_S, ServiceContext

T = TypeVar("T")

API_KEY_KIND = "rpak"
TOKEN_URL = "/api/v1/auth/token"  # noqa: S105 - a path


async def get_ctx(request: Request) -> ServiceContext:
    ctx: ServiceContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ServiceContext, Depends(get_ctx)]


def get_grants(request: Request) -> GrantCache:
    grants: GrantCache = request.app.state.grants
    return grants


async def run_db(
    ctx: ServiceContext, work: Callable[[AsyncSession], Awaitable[T]], *, read_only: bool = False
) -> T:
    """``work`` in the retried unit of work, within the request's database deadline.

    ``read_only`` work runs in ``ctx.read_sessions`` (no BEGIN/COMMIT round trips on PostgreSQL).

    A database that cannot serve in time (``is_unavailable``) is a 503 with ``Retry-After``, never a
    500: the client's request was fine, and a fail-over usually completes within seconds.
    """
    settings = ctx.settings
    try:
        return await run_in_transaction(
            ctx.read_sessions if read_only else ctx.sessions,
            work,
            attempts=settings.db_retry_attempts,
            deadline_s=settings.db_request_deadline_s,
        )
    except Exception as exc:
        if is_unavailable(exc):
            raise ServiceUnavailable(
                "the database cannot be reached right now; try again shortly", retry_after_s=RETRY_AFTER_S
            ) from exc
        raise


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

    async def read(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run a read: the same retried unit of work as ``run``, for work that changes nothing."""
        return await run_db(self.ctx, work, read_only=True)

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        changed: set[uuid.UUID] = set()

        async def tracked(session: AsyncSession) -> T:
            session.info.pop(GRANTS_SESSION_KEY, None)
            result = await work(session)
            changed.update(session.info.get(GRANTS_SESSION_KEY, ()))
            return result

        result = await run_db(self.ctx, tracked)
        for account_id in changed:
            if self.grants is not None:
                self.grants.invalidate(account_id)
            await self.ctx.publish(subjects.AUTH_CHANGED, AuthChanged(account_id=account_id).encode())
        return result


async def get_tx(ctx: Ctx, request: Request) -> Tx:
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
    app_id: uuid.UUID | None = None
    """The external application (OAuth2 client) calling for ``user_id``, with at most its scopes."""
    client_address: str | None = None
    user_agent: str | None = None
    grant: UserGrant | None = None
    """The cached grant this principal was made from (``/auth/me`` answers from it)."""

    def can(self, obj: PermissionObject, action: PermissionAction) -> bool:
        return (obj, action) in self.permissions

    def require(self, obj: PermissionObject, action: PermissionAction) -> None:
        if not self.can(obj, action):
            raise Forbidden(f"missing permission {obj.value}:{action.value}")

    def folder_clause(self, column: Any) -> sa.ColumnElement[bool]:
        """Rows this principal may see, by their folder column: those in the folders of its roles, and
        those in no folder (visible to every role of the account; changing them still needs the
        permission)."""
        if self.all_folders:
            return sa.true()
        if not self.folder_ids:
            return column.is_(None)
        return sa.or_(column.is_(None), column.in_(self.folder_ids))

    def may_use_folder(self, folder_id: uuid.UUID | None) -> bool:
        """An object may be put in (or left in) ``folder_id``: one of the caller's folders, or none."""
        return self.all_folders or folder_id is None or folder_id in self.folder_ids


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


async def _load_grant(session: AsyncSession, user_id: uuid.UUID) -> UserGrant | None:
    """The user's grant, from plain column selects (no ORM entities: this runs on every cache miss)."""
    user = (
        await session.execute(
            sa.select(
                User.account_id,
                User.username,
                User.token_version,
                User.is_active,
                User.display_name,
                User.email,
                User.last_login_at,
                Account.name.label("account_name"),
                Account.description.label("account_description"),
            )
            .join(Account, Account.id == User.account_id)
            .where(User.id == user_id)
        )
    ).first()
    if user is None:
        return None
    rows = (
        await session.execute(
            sa.select(
                Role.id,
                Role.name,
                Role.builtin,
                Role.all_folders,
                RolePermission.object,
                RolePermission.action,
            )
            .join(UserRole, UserRole.role_id == Role.id)
            .outerjoin(RolePermission, RolePermission.role_id == Role.id)
            .where(UserRole.user_id == user_id)
        )
    ).all()
    permissions = frozenset((r.object, r.action) for r in rows if r.object is not None)
    all_folders = any(r.all_folders for r in rows)
    roles = {r.id: RoleBrief(id=r.id, name=r.name, builtin=r.builtin) for r in rows}
    folder_ids: frozenset[uuid.UUID] = frozenset()
    if not all_folders and roles:
        folder_rows = await session.execute(
            sa.select(RoleFolder.folder_id).where(RoleFolder.role_id.in_(roles))
        )
        folder_ids = frozenset(r[0] for r in folder_rows)
    return UserGrant(
        account_id=user.account_id,
        user_id=user_id,
        username=user.username,
        token_version=user.token_version,
        is_active=user.is_active,
        permissions=permissions,
        all_folders=all_folders,
        folder_ids=folder_ids,
        display_name=user.display_name,
        email=user.email,
        last_login_at=user.last_login_at,
        account_name=user.account_name,
        account_description=user.account_description,
        roles=tuple(sorted(roles.values(), key=lambda r: r.name)),
    )


async def _user_grant(ctx: ServiceContext, grants: GrantCache, user_id: uuid.UUID) -> UserGrant | None:
    grant = grants.user(user_id)
    if grant is None:
        grant = await run_db(ctx, lambda session: _load_grant(session, user_id), read_only=True)
        if grant is None:
            return None
        grants.put_user(grant)
    return grant


async def _key_grant(ctx: ServiceContext, grants: GrantCache, prefix: str) -> KeyGrant | None:
    grant = grants.key(prefix)
    if grant is None:

        async def load(session: AsyncSession) -> Any:
            return (
                await session.execute(
                    sa.select(
                        ApiKey.id,
                        ApiKey.account_id,
                        ApiKey.user_id,
                        ApiKey.key_hash,
                        ApiKey.revoked_at,
                        ApiKey.expires_at,
                        ApiKey.last_used_at,
                    ).where(ApiKey.prefix == prefix)
                )
            ).first()

        key = await run_db(ctx, load, read_only=True)
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


async def _app_grant(ctx: ServiceContext, grants: GrantCache, app_id: uuid.UUID) -> AppGrant | None:
    grant = grants.app(app_id)
    if grant is None:

        async def load(session: AsyncSession) -> Any:
            return (
                await session.execute(
                    sa.select(
                        ExternalApp.account_id,
                        ExternalApp.user_id,
                        ExternalApp.is_active,
                        ExternalApp.token_version,
                        ExternalApp.scopes,
                        ExternalApp.folder_ids,
                    ).where(ExternalApp.id == app_id)
                )
            ).first()

        row = await run_db(ctx, load, read_only=True)
        if row is None:
            return None
        grant = AppGrant(
            id=app_id,
            account_id=row.account_id,
            user_id=row.user_id,
            is_active=row.is_active,
            token_version=row.token_version,
            scopes=frozenset(row.scopes),
            folder_ids=None if row.folder_ids is None else frozenset(uuid.UUID(f) for f in row.folder_ids),
        )
        grants.put_app(grant)
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
    app: AppGrant | None = None
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
        claims = grants.claims(token)
        if claims is None:
            try:
                claims = decode_access_token(ctx.settings, token)
            except jwt.PyJWTError as exc:
                raise Unauthorized(f"invalid access token: {exc}") from None
            grants.put_claims(token, claims)
        elif claims["exp"] <= now.timestamp():
            raise Unauthorized("invalid access token: Signature has expired")
        try:
            user_id = uuid.UUID(claims["sub"])
            account_id = uuid.UUID(claims["acc"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Unauthorized(f"invalid access token: {exc}") from None
        if "app" in claims:
            app, grant = await _app_token_grant(ctx, grants, claims, user_id, account_id)
            actor = ActorType.EXTERNAL_APP
        else:
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
        grant=grant,
    )
    if app is not None:
        _narrow_to_app(principal, app, claims.get("scp") if claims is not None else None)
    limiter = getattr(request.app.state, "limiter", None)
    if limiter is not None:
        # Per caller: the key, the app, or the user behind a token (rpa_api.ratelimit).
        who = f"k:{api_key_id}" if api_key_id else f"c:{app.id}" if app is not None else f"u:{grant.user_id}"
        await limiter.hit(ctx, who, ctx.settings.rate_limit_per_minute)
    if api_key_id is not None and (key_last_used is None or now - key_last_used > KEY_USE_RESOLUTION):
        await _mark_key_used(ctx, api_key_id, now)
        assert prefix is not None and key is not None
        grants.put_key(prefix, KeyGrant(**{**key.__dict__, "last_used_at": now}))
    return principal


async def _app_token_grant(
    ctx: ServiceContext,
    grants: GrantCache,
    claims: dict[str, Any],
    user_id: uuid.UUID,
    account_id: uuid.UUID,
) -> tuple[AppGrant, UserGrant | None]:
    """The app and its creator's grant for an app's token; 401 once the app is disabled, deleted or
    its secret rotated (its ``token_version`` moved on)."""
    try:
        app_id = uuid.UUID(claims["app"])
    except (ValueError, TypeError, AttributeError) as exc:
        raise Unauthorized(f"invalid access token: {exc}") from None
    app = await _app_grant(ctx, grants, app_id)
    if (
        app is None
        or not app.is_active
        or app.account_id != account_id
        or app.user_id != user_id
        or app.token_version != claims.get("ver")
    ):
        raise Unauthorized("access token is no longer valid")
    grant = await _user_grant(ctx, grants, user_id)
    if grant is not None and grant.account_id != account_id:
        raise Unauthorized("access token is no longer valid")
    return app, grant


def _narrow_to_app(principal: Principal, app: AppGrant, token_scopes: Any) -> None:
    """An app may do what its scopes (and its token's, when it asked for fewer) allow and its creator
    still may, in its folders (when restricted) that its creator still sees."""
    scopes = set(app.scopes)
    if isinstance(token_scopes, list):
        scopes &= set(token_scopes)
    principal.permissions = {(o, a) for o, a in principal.permissions if f"{o.value}:{a.value}" in scopes}
    principal.app_id = app.id
    if app.folder_ids is not None:
        principal.folder_ids = (
            set(app.folder_ids) if principal.all_folders else principal.folder_ids & app.folder_ids
        )
        principal.all_folders = False


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

    await run_db(ctx, work)


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
