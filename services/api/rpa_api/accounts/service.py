"""Accounts (tenants): the caller's own, and new ones made by the installation's administrators.

Who may create accounts: an installation has no level above accounts, so the account named
``default`` (the one ``rpa-api bootstrap`` makes at first start) stands for the installation, and
its Administrators (holders of its built-in Administrator role, with ``accounts:create``) may create
other accounts. Administrators of any other account manage only their own: otherwise a tenant could
mint tenants.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.accounts.schemas import AccountCreate, AccountCreated, AccountOut, AccountUpdate, AdminRef
from rpa_api.deps import Principal
from rpa_api.kit import audit
from rpa_api.roles.builtin import ensure_builtin_roles
from rpa_api.roles.service import ADMINISTRATOR
from rpa_api.users.service import flush_username
from rpa_common.errors import Conflict, Forbidden
from rpa_common.models import Account, Role, User, UserRole

INSTALLATION_ACCOUNT = "default"


async def current(session: AsyncSession, principal: Principal) -> Account:
    account = await session.get(Account, principal.account_id)
    assert account is not None  # the principal's user belongs to it (cascade deletes the user too)
    return account


async def update_current(session: AsyncSession, principal: Principal, body: AccountUpdate) -> Account:
    account = await current(session, principal)
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    for name, value in changes.items():
        setattr(account, name, value)
    account.updated_at = datetime.now(UTC)
    await session.flush()
    audit.record(session, principal, "update", "account", account.id, changes)
    return account


async def check_installation_admin(session: AsyncSession, principal: Principal) -> None:
    """403 unless the caller is an Administrator of the installation account (see module doc)."""
    is_admin = (
        await session.execute(
            sa.select(Role.id)
            .join(Account, Account.id == Role.account_id)
            .join(UserRole, UserRole.role_id == Role.id)
            .where(
                Account.id == principal.account_id,
                Account.name == INSTALLATION_ACCOUNT,
                Role.builtin.is_(True),
                Role.name == ADMINISTRATOR,
                UserRole.user_id == principal.user_id,
            )
            .limit(1)
        )
    ).first()
    if is_admin is None:
        raise Forbidden(f"only Administrators of the {INSTALLATION_ACCOUNT!r} account may create accounts")


async def create_account(
    session: AsyncSession,
    principal: Principal,
    account_id: uuid.UUID,
    admin_id: uuid.UUID,
    body: AccountCreate,
    password_hash: str,
) -> AccountCreated:
    await check_installation_admin(session, principal)
    account = await session.get(Account, account_id)
    if account is None:
        account = await _create(session, principal, account_id, admin_id, body, password_hash)
    # else: a re-run after a commit that did happen
    return AccountCreated(
        **AccountOut.model_validate(account).model_dump(),
        admin=AdminRef(id=admin_id, username=body.admin.username),
    )


async def _create(
    session: AsyncSession,
    principal: Principal,
    account_id: uuid.UUID,
    admin_id: uuid.UUID,
    body: AccountCreate,
    password_hash: str,
) -> Account:
    if (
        await session.execute(sa.select(Account.id).where(sa.func.lower(Account.name) == body.name.lower()))
    ).first() is not None:
        raise Conflict(f"an account named {body.name!r} already exists", field="name")
    username = body.admin.username
    if (
        await session.execute(sa.select(User.id).where(sa.func.lower(User.username) == username.lower()))
    ).first() is not None:
        raise Conflict(f"the username {username!r} is taken", field="admin.username")
    account = Account(id=account_id, name=body.name, description=body.description)
    session.add(account)
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(f"an account named {body.name!r} already exists", field="name") from None
    roles = await ensure_builtin_roles(session, account_id)
    session.add(
        User(
            id=admin_id,
            account_id=account_id,
            username=username,
            display_name=body.admin.display_name,
            email=body.admin.email,
            password_hash=password_hash,
        )
    )
    await flush_username(session, username, "admin.username")
    session.add(UserRole(user_id=admin_id, role_id=roles[ADMINISTRATOR].id))
    await session.flush()
    audit.record(
        session,
        principal,
        "create",
        "account",
        account_id,
        {"name": body.name, "description": body.description, "admin": {"id": admin_id, "username": username}},
    )
    return account
