"""First start: the first account, its built-in roles and the user ``admin``. Idempotent."""

from __future__ import annotations

import secrets
import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.roles.builtin import ensure_builtin_roles
from rpa_common.models import Account, User, UserRole
from rpa_common.security import hash_password


async def bootstrap(
    session: AsyncSession, account_name: str, admin_username: str, admin_password: str | None
) -> tuple[Account, str | None]:
    """Returns the account and the admin password when one was generated (to print once)."""
    account = (
        await session.execute(sa.select(Account).where(Account.name == account_name))
    ).scalar_one_or_none()
    if account is None:
        account = Account(id=uuid.uuid4(), name=account_name, description="Created at first start")
        session.add(account)
        await session.flush()
    roles = await ensure_builtin_roles(session, account.id)
    generated: str | None = None
    user = (
        await session.execute(sa.select(User).where(User.username == admin_username))
    ).scalar_one_or_none()
    if user is None:
        if not admin_password:
            admin_password = generated = secrets.token_urlsafe(12)
        user = User(
            id=uuid.uuid4(),
            account_id=account.id,
            username=admin_username,
            display_name="Administrator",
            password_hash=hash_password(admin_password),
        )
        session.add(user)
        await session.flush()
        session.add(UserRole(user_id=user.id, role_id=roles["Administrator"].id))
        await session.flush()
    return account, generated
