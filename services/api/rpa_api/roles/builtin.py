"""The built-in roles every account starts with."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.models import Role, RolePermission
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O

# "reveal" is an action of credentials only, and credentials have no other action (people manage
# them as resources): see a password only with credentials:reveal, which only Administrator has.
ALL: set[tuple[O, A]] = {(o, a) for o in O for a in A if (o is O.CREDENTIALS) == (a is A.REVEAL)}
# Webhooks are not "operational": a receiver's URL often carries its own token.
READ_ALL_OPERATIONAL: set[tuple[O, A]] = {
    (o, A.READ)
    for o in O
    if o not in (O.ACCOUNTS, O.USERS, O.ROLES, O.API_KEYS, O.AUDIT, O.CREDENTIALS, O.WEBHOOKS)
}
CRUD = (A.READ, A.CREATE, A.UPDATE, A.DELETE)

BUILTIN_ROLES: dict[str, tuple[str, set[tuple[O, A]]]] = {
    "Administrator": ("Everything in the account, including users, roles and the audit trail.", ALL),
    "Developer": (
        "Publishes processes; manages queues, resources and triggers; runs jobs.",
        READ_ALL_OPERATIONAL
        | {(O.PROCESSES, a) for a in CRUD}
        | {(O.QUEUES, a) for a in CRUD}
        | {(O.TASKS, a) for a in CRUD}
        | {(O.RESOURCES, a) for a in CRUD}
        | {(O.CALENDARS, a) for a in CRUD}
        | {(O.TRIGGERS, a) for a in (*CRUD, A.RUN)}
        | {(O.WEBHOOKS, a) for a in CRUD}
        | {(O.JOBS, A.RUN), (O.JOBS, A.CREATE)}
        | {(O.API_KEYS, a) for a in CRUD},
    ),
    "Operator": (
        "Runs and stops jobs, fires triggers, works queue items; reads the rest.",
        READ_ALL_OPERATIONAL
        | {(O.JOBS, A.RUN), (O.JOBS, A.CREATE), (O.TRIGGERS, A.RUN), (O.TASKS, A.UPDATE), (O.TASKS, A.CREATE)}
        | {(O.ROBOTS, A.UPDATE)}
        | {(O.API_KEYS, a) for a in CRUD},
    ),
    "Viewer": ("Reads robots, processes, jobs, queues, logs and statistics.", READ_ALL_OPERATIONAL),
}


async def ensure_builtin_roles(session: AsyncSession, account_id: uuid.UUID) -> dict[str, Role]:
    """Create (or complete) the built-in roles of an account; idempotent."""
    existing = {
        r.name: r
        for r in (
            await session.execute(
                sa.select(Role).where(Role.account_id == account_id, Role.builtin.is_(True))
            )
        ).scalars()
    }
    out: dict[str, Role] = {}
    for name, (description, perms) in BUILTIN_ROLES.items():
        role = existing.get(name)
        if role is None:
            role = Role(
                id=uuid.uuid4(),
                account_id=account_id,
                name=name,
                description=description,
                builtin=True,
                all_folders=True,
            )
            session.add(role)
            await session.flush()
            have: set[tuple[O, A]] = set()
        else:
            rows = await session.execute(
                sa.select(RolePermission.object, RolePermission.action).where(
                    RolePermission.role_id == role.id
                )
            )
            have = {(r[0], r[1]) for r in rows}
        for obj, action in sorted(perms - have):
            session.add(RolePermission(role_id=role.id, object=obj, action=action))
        out[name] = role
    await session.flush()
    return out
