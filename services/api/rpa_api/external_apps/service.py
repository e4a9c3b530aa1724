"""External applications and the OAuth2 client credentials grant.

An app acts for the user who created it, and never beyond that user: its scopes are checked against
the creator's permissions when it is made, and every request of its tokens is again narrowed to what
the creator may do then (``deps._narrow_to_app``). Disabling, deleting or rotating the secret of an
app bumps or removes what its tokens are checked against; the audit record of that change drops the
account's cached grants on every replica (``AUTH_CHANGED``), so its tokens stop at once.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal, Tx
from rpa_api.external_apps.schemas import ClientTokenOut, ExternalAppCreate, ExternalAppUpdate
from rpa_api.kit import audit
from rpa_common.errors import NotFound, Unprocessable
from rpa_common.models import AccessFolder, Account, ExternalApp, Role, RolePermission, User
from rpa_common.models.enums import ActorType, PermissionAction, PermissionObject
from rpa_common.security import hash_key, issue_access_token
from rpa_common.service import ServiceContext

CLIENT_ID_PREFIX = "rpac_"
_NO_SECRET_HASH = "0" * 64


class OAuthError(Exception):
    """A token endpoint error, answered as RFC 6749 §5.2 JSON (``{"error": ..., "error_description"}``)."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


def _new_secret() -> str:
    return secrets.token_urlsafe(32)


def visible(principal: Principal, all_apps: bool) -> sa.ColumnElement[bool]:
    """The caller's own apps; with ``all_apps``, every app of the account (callers who manage users)."""
    clause = ExternalApp.account_id == principal.account_id
    if not all_apps:
        clause = sa.and_(clause, ExternalApp.user_id == principal.user_id)
    return clause


def _perm(value: str) -> tuple[PermissionObject, PermissionAction] | None:
    obj, sep, action = value.partition(":")
    if not sep:
        return None
    try:
        return PermissionObject(obj), PermissionAction(action)
    except ValueError:
        return None


async def _resolve_scopes(session: AsyncSession, principal: Principal, scopes: list[str]) -> list[str]:
    """Scopes as "object:action" strings: role names expanded; each one the creator must hold."""
    out: set[str] = set()
    for i, value in enumerate(scopes):
        field = f"scopes.{i}"
        perm = _perm(value)
        if perm is not None:
            perms = [perm]
        else:
            role_id = (
                await session.execute(
                    sa.select(Role.id).where(
                        Role.account_id == principal.account_id, sa.func.lower(Role.name) == value.lower()
                    )
                )
            ).scalar_one_or_none()
            if role_id is None:
                raise Unprocessable(
                    f"{value!r} is neither a permission (object:action) nor a role of the account",
                    field=field,
                )
            rows = await session.execute(
                sa.select(RolePermission.object, RolePermission.action).where(
                    RolePermission.role_id == role_id
                )
            )
            perms = [(r.object, r.action) for r in rows]
        for obj, action in perms:
            if not principal.can(obj, action):
                raise Unprocessable(
                    f"you cannot grant {obj.value}:{action.value}: an app never gets more than its creator holds",
                    field=field,
                )
            out.add(f"{obj.value}:{action.value}")
    return sorted(out)


async def _check_folders(session: AsyncSession, principal: Principal, folder_ids: list[uuid.UUID]) -> None:
    found = set(
        (
            await session.execute(
                sa.select(AccessFolder.id).where(
                    AccessFolder.account_id == principal.account_id, AccessFolder.id.in_(folder_ids)
                )
            )
        ).scalars()
    )
    for i, folder_id in enumerate(folder_ids):
        if folder_id not in found:
            raise NotFound.of("folder", folder_id, field=f"folder_ids.{i}")
        if not principal.may_use_folder(folder_id):
            raise Unprocessable(f"you may not use folder {folder_id}", field=f"folder_ids.{i}")


async def create(tx: Tx, principal: Principal, body: ExternalAppCreate) -> tuple[ExternalApp, str]:
    app_id = uuid.uuid4()
    client_id = CLIENT_ID_PREFIX + secrets.token_hex(10)
    secret = _new_secret()

    async def work(session: AsyncSession) -> ExternalApp:
        existing = await session.get(ExternalApp, app_id)
        if existing is not None:  # a re-run after a commit that did happen
            return existing
        scopes = await _resolve_scopes(session, principal, body.scopes)
        if body.folder_ids is not None:
            await _check_folders(session, principal, body.folder_ids)
        row = ExternalApp(
            id=app_id,
            account_id=principal.account_id,
            user_id=principal.user_id,
            name=body.name,
            client_id=client_id,
            secret_hash=hash_key(secret),
            scopes=scopes,
            folder_ids=None if body.folder_ids is None else sorted({str(f) for f in body.folder_ids}),
            is_active=True,
            token_version=0,
        )
        session.add(row)
        await session.flush()
        audit.record(
            session,
            principal,
            "create",
            "external_app",
            app_id,
            {"name": body.name, "client_id": client_id, "scopes": scopes, "folder_ids": row.folder_ids},
        )
        return row

    return await tx.run(work), secret


async def _get(
    session: AsyncSession, principal: Principal, app_id: uuid.UUID, manage_all: bool
) -> ExternalApp:
    row = (
        await session.execute(
            sa.select(ExternalApp)
            .where(ExternalApp.id == app_id, visible(principal, manage_all))
            .with_for_update()
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound.of("external app", app_id)
    return row


async def get(tx: Tx, principal: Principal, app_id: uuid.UUID, manage_all: bool) -> ExternalApp:
    async def work(session: AsyncSession) -> ExternalApp:
        row = (
            await session.execute(
                sa.select(ExternalApp).where(ExternalApp.id == app_id, visible(principal, manage_all))
            )
        ).scalar_one_or_none()
        if row is None:
            raise NotFound.of("external app", app_id)
        return row

    return await tx.read(work)


async def update(
    tx: Tx, principal: Principal, app_id: uuid.UUID, body: ExternalAppUpdate, manage_all: bool
) -> ExternalApp:
    async def work(session: AsyncSession) -> ExternalApp:
        row = await _get(session, principal, app_id, manage_all)
        changes: dict[str, object] = {}
        if body.name is not None and body.name != row.name:
            changes["name"] = body.name
            row.name = body.name
        if body.is_active is not None and body.is_active != row.is_active:
            changes["is_active"] = body.is_active
            row.is_active = body.is_active
            row.token_version += 1  # tokens from before a disable never come back with a re-enable
        row.updated_at = datetime.now(UTC)
        await session.flush()
        audit.record(session, principal, "update", "external_app", app_id, changes)
        return row

    return await tx.run(work)


async def rotate_secret(
    tx: Tx, principal: Principal, app_id: uuid.UUID, manage_all: bool
) -> tuple[ExternalApp, str]:
    secret = _new_secret()

    async def work(session: AsyncSession) -> ExternalApp:
        row = await _get(session, principal, app_id, manage_all)
        row.secret_hash = hash_key(secret)
        row.token_version += 1
        row.updated_at = datetime.now(UTC)
        await session.flush()
        audit.record(session, principal, "rotate_secret", "external_app", app_id, {"name": row.name})
        return row

    return await tx.run(work), secret


async def delete(tx: Tx, principal: Principal, app_id: uuid.UUID, manage_all: bool) -> None:
    async def work(session: AsyncSession, rerun: bool) -> None:
        row = (
            await session.execute(
                sa.select(ExternalApp).where(ExternalApp.id == app_id, visible(principal, manage_all))
            )
        ).scalar_one_or_none()
        if row is None:
            if rerun:
                return
            raise NotFound.of("external app", app_id)
        await session.delete(row)
        await session.flush()
        audit.record(session, principal, "delete", "external_app", app_id, {"name": row.name})

    await tx.run_aware(work)


# The client credentials grant -----------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRequest:
    client_id: str | None
    client_secret: str | None
    scope: str | None
    address: str | None
    user_agent: str | None


async def client_token(ctx: ServiceContext, tx: Tx, req: TokenRequest) -> ClientTokenOut:
    """An access token for an app's client id and secret (RFC 6749 §4.4); ``OAuthError`` otherwise."""
    if not req.client_id or not req.client_secret:
        raise OAuthError(
            401, "invalid_client", "client authentication is required (HTTP Basic or client_id/client_secret)"
        )
    client_id, given_hash = req.client_id, hash_key(req.client_secret)

    async def find(session: AsyncSession) -> tuple[ExternalApp, bool] | None:
        row = (
            await session.execute(
                sa.select(ExternalApp, sa.and_(User.is_active, Account.is_active))
                .join(User, User.id == ExternalApp.user_id)
                .join(Account, Account.id == ExternalApp.account_id)
                .where(ExternalApp.client_id == client_id)
            )
        ).first()
        return None if row is None else (row[0], bool(row[1]))

    found = await tx.read(find)
    stored = found[0].secret_hash if found is not None else _NO_SECRET_HASH
    # Compared even for an unknown client id, so a miss and a wrong secret take the same time.
    if not hmac.compare_digest(given_hash, stored) or found is None or not found[0].is_active or not found[1]:
        raise OAuthError(
            401,
            "invalid_client",
            "unknown client, wrong secret, or the app (its user, its account) is disabled",
        )
    app = found[0]
    scopes: list[str] | None = None
    if req.scope:
        asked = sorted(set(req.scope.split()))
        beyond = [s for s in asked if s not in app.scopes]
        if beyond:
            raise OAuthError(400, "invalid_scope", f"not scopes of this app: {' '.join(beyond)}")
        scopes = asked
    now = datetime.now(UTC)
    actor = Principal(
        account_id=app.account_id,
        user_id=app.user_id,
        username=app.name,
        actor_type=ActorType.EXTERNAL_APP,
        app_id=app.id,
        client_address=req.address,
        user_agent=req.user_agent,
    )

    async def issued(session: AsyncSession) -> int:
        await session.execute(
            sa.update(ExternalApp).where(ExternalApp.id == app.id).values(last_token_at=now)
        )
        audit.record(session, actor, "token", "external_app", app.id, {"scope": scopes}, kind="auth")
        version = (
            await session.execute(sa.select(ExternalApp.token_version).where(ExternalApp.id == app.id))
        ).scalar_one()
        return int(version)

    version = await tx.run(issued)
    ttl = ctx.settings.client_token_ttl_s
    token = issue_access_token(
        ctx.settings,
        user_id=app.user_id,
        account_id=app.account_id,
        token_version=version,
        app_id=app.id,
        scopes=scopes,
        ttl_s=ttl,
    )
    return ClientTokenOut(
        access_token=token, expires_in=ttl, scope=" ".join(scopes if scopes is not None else app.scopes)
    )
