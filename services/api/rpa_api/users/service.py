"""Users of an account: create, change, set roles, reset passwords, delete.

Rules that keep an account manageable and its powers where they were given:
- usernames are unique across the installation (a login names no account), compared
  case-insensitively on both databases;
- nobody deletes or deactivates themselves, and the last active Administrator stays one (409);
  the account's Administrator role row is locked while this is checked, so two admins removing each
  other at the same moment cannot both succeed;
- nobody grants roles beyond their own permissions, nor manages a user who holds more than they do
  (403): otherwise a user manager could reset an Administrator's password and become one.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.auth.service import revoke_all_refresh_tokens
from rpa_api.deps import Principal
from rpa_api.kit import audit
from rpa_api.kit.lookup import get_owned
from rpa_api.roles.service import ADMINISTRATOR, check_may_grant, roles_in_account, roles_query
from rpa_api.users.schemas import RoleRef, UserCreate, UserOut, UserUpdate
from rpa_common.errors import Conflict, NotFound
from rpa_common.models import Role, User, UserRole


def users_query(principal: Principal) -> sa.Select[User]:
    return sa.select(User).where(User.account_id == principal.account_id)


async def get_user(
    session: AsyncSession, principal: Principal, user_id: uuid.UUID, *, lock: bool = False
) -> User:
    return await get_owned(
        session, users_query(principal).where(User.id == user_id), "user", user_id, lock=lock
    )


async def users_out(session: AsyncSession, users: Sequence[User]) -> list[UserOut]:
    """Responses for ``users``, their roles fetched in one query."""
    ids = [u.id for u in users]
    roles: dict[uuid.UUID, list[RoleRef]] = {i: [] for i in ids}
    if ids:
        rows = await session.execute(
            sa.select(UserRole.user_id, Role.id, Role.name)
            .join(Role, Role.id == UserRole.role_id)
            .where(UserRole.user_id.in_(ids))
            .order_by(Role.name)
        )
        for user_id, role_id, name in rows:
            roles[user_id].append(RoleRef(id=role_id, name=name))
    return [
        UserOut(
            id=u.id,
            username=u.username,
            display_name=u.display_name,
            email=u.email,
            is_active=u.is_active,
            last_login_at=u.last_login_at,
            roles=roles[u.id],
            created_at=u.created_at,
            updated_at=u.updated_at,
        )
        for u in users
    ]


async def _username_free(
    session: AsyncSession, username: str, except_id: uuid.UUID | None, field: str
) -> None:
    stmt = sa.select(User.id).where(sa.func.lower(User.username) == username.lower())
    if except_id is not None:
        stmt = stmt.where(User.id != except_id)
    if (await session.execute(stmt.limit(1))).first() is not None:
        raise Conflict(f"the username {username!r} is taken", field=field)


async def flush_username(session: AsyncSession, username: str, field: str = "username") -> None:
    try:
        await session.flush()
    except IntegrityError:  # a concurrent create of the same username won the race
        raise Conflict(f"the username {username!r} is taken", field=field) from None


async def _role_ids_of(session: AsyncSession, user_id: uuid.UUID) -> set[uuid.UUID]:
    rows = await session.execute(sa.select(UserRole.role_id).where(UserRole.user_id == user_id))
    return set(rows.scalars())


async def _check_may_manage(session: AsyncSession, principal: Principal, user: User) -> None:
    if user.id == principal.user_id:
        return
    held = (
        (
            await session.execute(
                roles_query(principal)
                .join(UserRole, UserRole.role_id == Role.id)
                .where(UserRole.user_id == user.id)
            )
        )
        .scalars()
        .unique()
        .all()
    )
    check_may_grant(principal, held, "id")


async def _guard_last_admin(
    session: AsyncSession, principal: Principal, user: User, field: str | None
) -> None:
    """409 if ``user`` is the account's last active Administrator (called before they stop being one)."""
    admin = (
        await session.execute(
            sa.select(Role)
            .where(
                Role.account_id == principal.account_id, Role.builtin.is_(True), Role.name == ADMINISTRATOR
            )
            .with_for_update()
        )
    ).scalar_one_or_none()
    if admin is None or not user.is_active or admin.id not in await _role_ids_of(session, user.id):
        return
    others = (
        await session.execute(
            sa.select(sa.func.count())
            .select_from(UserRole)
            .join(User, User.id == UserRole.user_id)
            .where(UserRole.role_id == admin.id, User.id != user.id, User.is_active.is_(True))
        )
    ).scalar_one()
    if not others:
        raise Conflict(f"{user.username!r} is the last active Administrator of the account", field=field)


async def _set_roles(session: AsyncSession, user_id: uuid.UUID, role_ids: Sequence[uuid.UUID]) -> None:
    await session.execute(sa.delete(UserRole).where(UserRole.user_id == user_id))
    session.add_all(UserRole(user_id=user_id, role_id=r) for r in dict.fromkeys(role_ids))
    await session.flush()


async def create_user(
    session: AsyncSession, principal: Principal, user_id: uuid.UUID, body: UserCreate, password_hash: str
) -> UserOut:
    existing = await session.get(User, user_id)
    if existing is not None:  # a re-run after a commit that did happen
        return (await users_out(session, [existing]))[0]
    await _username_free(session, body.username, None, "username")
    roles = await roles_in_account(session, principal, body.role_ids, "role_ids")
    check_may_grant(principal, roles, "role_ids")
    user = User(
        id=user_id,
        account_id=principal.account_id,
        username=body.username,
        display_name=body.display_name,
        email=body.email,
        password_hash=password_hash,
        is_active=body.is_active,
    )
    session.add(user)
    await flush_username(session, body.username)
    await _set_roles(session, user_id, [r.id for r in roles])
    audit.record(
        session, principal, "create", "user", user_id, body.model_dump(mode="json", exclude={"password"})
    )
    return (await users_out(session, [user]))[0]


async def update_user(
    session: AsyncSession, principal: Principal, user_id: uuid.UUID, body: UserUpdate
) -> UserOut:
    user = await get_user(session, principal, user_id, lock=True)
    await _check_may_manage(session, principal, user)
    changes = body.model_dump(mode="json", exclude_unset=True)
    if body.is_active is False and user.is_active:
        if user.id == principal.user_id:
            raise Conflict("you cannot deactivate yourself", field="is_active")
        await _guard_last_admin(session, principal, user, "is_active")
    if body.role_ids is not None:
        roles = await roles_in_account(session, principal, body.role_ids, "role_ids")
        check_may_grant(principal, roles, "role_ids")
        if not any(r.builtin and r.name == ADMINISTRATOR for r in roles):
            await _guard_last_admin(session, principal, user, "role_ids")
        await _set_roles(session, user.id, [r.id for r in roles])
    if body.username is not None and body.username != user.username:
        await _username_free(session, body.username, user.id, "username")
        user.username = body.username
    if "display_name" in changes:
        user.display_name = body.display_name or ""
    if "email" in changes:
        user.email = body.email
    if body.is_active is not None:
        user.is_active = body.is_active
    user.updated_at = datetime.now(UTC)
    await flush_username(session, user.username)
    audit.record(session, principal, "update", "user", user.id, changes)
    return (await users_out(session, [user]))[0]


async def reset_password(
    session: AsyncSession, principal: Principal, user_id: uuid.UUID, password_hash: str
) -> None:
    """Set a new password; every token the user holds stops working."""
    user = await get_user(session, principal, user_id, lock=True)
    await _check_may_manage(session, principal, user)
    user.password_hash = password_hash
    user.token_version += 1
    user.updated_at = datetime.now(UTC)
    await session.flush()
    await revoke_all_refresh_tokens(session, user.id)
    audit.record(session, principal, "reset_password", "user", user.id)


async def delete_user(
    session: AsyncSession, principal: Principal, user_id: uuid.UUID, *, missing_ok: bool = False
) -> None:
    try:
        user = await get_user(session, principal, user_id, lock=True)
    except NotFound:
        if missing_ok:
            return
        raise
    if user.id == principal.user_id:
        raise Conflict("you cannot delete yourself", field="id")
    await _check_may_manage(session, principal, user)
    await _guard_last_admin(session, principal, user, "id")
    await session.execute(sa.delete(User).where(User.id == user.id))
    audit.record(session, principal, "delete", "user", user.id, {"username": user.username})
