"""Tiny factories that write processes, versions, robots and groups straight through the ORM.

Tests of one API use them to set up the objects another API owns, so each suite stands alone. Every
object belongs to the given account; names are random so tests never collide.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import (
    AccessFolder,
    Process,
    ProcessVersion,
    Robot,
    RobotGroup,
    RobotGroupMember,
    Role,
    RoleFolder,
    RolePermission,
    User,
    UserRole,
)
from rpa_common.models.enums import PermissionAction, PermissionObject, RobotRole
from rpa_common.security import hash_password, issue_access_token, make_key
from rpa_common.service import ServiceContext


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def make_process(
    ctx: ServiceContext,
    account_id: uuid.UUID,
    *,
    versions: int = 1,
    current: bool = True,
    folder_id: uuid.UUID | None = None,
    name: str | None = None,
) -> tuple[Process, list[ProcessVersion]]:
    """A process with ``versions`` versions (1.0, 2.0, ...); the last is current unless ``current=False``."""

    async def work(session: AsyncSession) -> tuple[Process, list[ProcessVersion]]:
        process = Process(
            id=uuid.uuid4(), account_id=account_id, name=name or _name("proc"), folder_id=folder_id
        )
        session.add(process)
        await session.flush()
        made = []
        for n in range(1, versions + 1):
            version = ProcessVersion(
                id=uuid.uuid4(),
                account_id=account_id,
                process_id=process.id,
                version=f"{n}.0",
                entry_point="main.py",
                sha256=hashlib.sha256(f"{process.id}:{n}".encode()).hexdigest(),
                size=123,
            )
            session.add(version)
            made.append(version)
        await session.flush()
        if made and current:
            process.current_version_id = made[-1].id
            await session.flush()
        return process, made

    return await run_in_transaction(ctx.sessions, work)


async def make_robot(
    ctx: ServiceContext,
    account_id: uuid.UUID,
    *,
    active: bool = True,
    role: RobotRole = RobotRole.ATTENDED,
    folder_id: uuid.UUID | None = None,
    **values: Any,
) -> Robot:
    key = make_key("rbk")

    async def work(session: AsyncSession) -> Robot:
        robot = Robot(
            id=uuid.uuid4(),
            account_id=account_id,
            name=_name("robot"),
            role=role,
            is_active=active,
            folder_id=folder_id,
            key_prefix=key.prefix,
            key_hash=key.hash,
            **values,
        )
        session.add(robot)
        await session.flush()
        return robot

    return await run_in_transaction(ctx.sessions, work)


async def make_group(
    ctx: ServiceContext, account_id: uuid.UUID, robots: list[Robot] | None = None
) -> RobotGroup:
    async def work(session: AsyncSession) -> RobotGroup:
        group = RobotGroup(id=uuid.uuid4(), account_id=account_id, name=_name("group"))
        session.add(group)
        await session.flush()
        for robot in robots or []:
            session.add(RobotGroupMember(group_id=group.id, robot_id=robot.id))
        await session.flush()
        return group

    return await run_in_transaction(ctx.sessions, work)


async def make_folder(ctx: ServiceContext, account_id: uuid.UUID) -> AccessFolder:
    async def work(session: AsyncSession) -> AccessFolder:
        folder = AccessFolder(id=uuid.uuid4(), account_id=account_id, name=_name("folder"))
        session.add(folder)
        await session.flush()
        return folder

    return await run_in_transaction(ctx.sessions, work)


async def make_folder_user(
    ctx: ServiceContext,
    account_id: uuid.UUID,
    folder_ids: list[uuid.UUID],
    permissions: list[tuple[PermissionObject, PermissionAction]],
) -> tuple[uuid.UUID, dict[str, str]]:
    """A user whose only role grants ``permissions`` in ``folder_ids`` only: (id, auth headers)."""

    async def work(session: AsyncSession) -> uuid.UUID:
        role = Role(id=uuid.uuid4(), account_id=account_id, name=_name("role"), all_folders=False)
        user = User(
            id=uuid.uuid4(),
            account_id=account_id,
            username=_name("folder-user"),
            password_hash=hash_password("x"),
        )
        session.add_all([role, user])
        await session.flush()
        session.add_all([RolePermission(role_id=role.id, object=o, action=a) for o, a in permissions])
        session.add_all([RoleFolder(role_id=role.id, folder_id=f) for f in folder_ids])
        session.add(UserRole(user_id=user.id, role_id=role.id))
        await session.flush()
        return user.id

    user_id = await run_in_transaction(ctx.sessions, work)
    token = issue_access_token(ctx.settings, user_id=user_id, account_id=account_id, token_version=0)
    return user_id, {"Authorization": f"Bearer {token}"}
