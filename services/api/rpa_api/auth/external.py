"""A user who logged in through an account's identity provider (LDAP, OpenID Connect): found or made.

The first login creates the orchestrator user (or links the account's user of the same name); every
login sets the user's roles from the provider's groups through its ``group_roles`` (when it has any).
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.auth import service
from rpa_api.deps import Principal
from rpa_api.kit import audit
from rpa_common.errors import Conflict
from rpa_common.models import IdentityProvider, Role, User, UserRole


async def link_user(
    session: AsyncSession,
    provider: IdentityProvider,
    *,
    username: str,
    display_name: str,
    email: str | None,
    groups: list[str],
    client: service.Client,
    via: str,
) -> tuple[User, Principal]:
    """The user of ``provider``'s account named ``username``, created if new, roles mapped.

    A disabled user is returned unchanged (the caller refuses the login). A name taken in another
    account is a 409.
    """
    user = (await session.execute(sa.select(User).where(User.username == username))).scalar_one_or_none()
    if user is not None and user.account_id != provider.account_id:
        raise Conflict("this username belongs to another account", field="username")
    if user is None:
        user = User(
            id=uuid.uuid4(),
            account_id=provider.account_id,
            username=username,
            display_name=display_name[:200],
            email=(email or None) and email[:320],
            password_hash=None,
        )
        session.add(user)
        await session.flush()
        audit.record(
            session,
            service._user_principal(user, client),
            "create",
            "user",
            user.id,
            {"via": via, "provider": str(provider.id)},
            kind="auth",
        )
    principal = service._user_principal(user, client)
    if not user.is_active:
        return user, principal
    user.display_name = display_name[:200] or user.display_name
    if email:
        user.email = email[:320]
    if provider.group_roles:
        wanted_roles = sorted({r for g in groups for r in provider.group_roles.get(g, [])})
        role_ids = set(
            (
                await session.execute(
                    sa.select(Role.id).where(
                        Role.account_id == provider.account_id, Role.name.in_(wanted_roles)
                    )
                )
            ).scalars()
        )
        current = set(
            (await session.execute(sa.select(UserRole.role_id).where(UserRole.user_id == user.id))).scalars()
        )
        if role_ids != current:
            await session.execute(
                sa.delete(UserRole).where(UserRole.user_id == user.id, UserRole.role_id.not_in(role_ids))
                if role_ids
                else sa.delete(UserRole).where(UserRole.user_id == user.id)
            )
            for rid in role_ids - current:
                session.add(UserRole(user_id=user.id, role_id=rid))
            audit.record(session, principal, "update", "user", user.id, {"roles": wanted_roles}, kind="auth")
    return user, principal
