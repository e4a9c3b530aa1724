"""Robot groups: rules and queries (CRUD and membership).

Functions here run inside the request's unit of work and only ``flush``. A group is scoped to the
caller's account and folders; its members are robots the caller can see.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal
from rpa_api.kit.audit import record
from rpa_api.kit.folders import check_folder, check_name_and_folder
from rpa_api.kit.lookup import get_owned
from rpa_api.kit.names import flush_or_conflict, name_taken
from rpa_api.kit.patch import apply_patch, require_not_null
from rpa_api.robot_groups import schemas
from rpa_api.robots.service import get_robot, unfinished_jobs, visible_robot_ids
from rpa_common.errors import Conflict, NotFound
from rpa_common.models import Job, Robot, RobotGroup, RobotGroupMember


def groups_query(principal: Principal) -> sa.Select[RobotGroup]:
    return sa.select(RobotGroup).where(
        RobotGroup.account_id == principal.account_id, principal.folder_clause(RobotGroup.folder_id)
    )


async def get_group(
    session: AsyncSession, principal: Principal, group_id: uuid.UUID, *, lock: bool = False
) -> RobotGroup:
    return await get_owned(
        session, groups_query(principal).where(RobotGroup.id == group_id), "robot group", group_id, lock=lock
    )


async def member_counts(session: AsyncSession, group_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, int]:
    ids = list(group_ids)
    if not ids:
        return {}
    rows = await session.execute(
        sa.select(RobotGroupMember.group_id, sa.func.count())
        .where(RobotGroupMember.group_id.in_(ids))
        .group_by(RobotGroupMember.group_id)
    )
    return {gid: int(n) for gid, n in rows}


async def group_robots(session: AsyncSession, group_id: uuid.UUID) -> list[Robot]:
    rows = await session.execute(
        sa.select(Robot)
        .join(RobotGroupMember, RobotGroupMember.robot_id == Robot.id)
        .where(RobotGroupMember.group_id == group_id)
        .order_by(Robot.name)
    )
    return list(rows.scalars())


def group_out(group: Any, robot_count: int) -> schemas.RobotGroupOut:
    """``group``: a ``RobotGroup``, or a row of its columns (lists select only those)."""
    return schemas.RobotGroupOut.model_validate(
        {
            "id": group.id,
            "name": group.name,
            "description": group.description,
            "folder_id": group.folder_id,
            "robot_count": robot_count,
            "created_at": group.created_at,
            "updated_at": group.updated_at,
        }
    )


async def group_detail(session: AsyncSession, group: RobotGroup) -> schemas.RobotGroupDetail:
    robots = await group_robots(session, group.id)
    base = group_out(group, len(robots)).model_dump()
    return schemas.RobotGroupDetail.model_validate({**base, "robots": robots})


async def create_group(
    session: AsyncSession, principal: Principal, group_id: uuid.UUID, body: schemas.RobotGroupCreate
) -> RobotGroup:
    existing = await session.get(RobotGroup, group_id)
    if existing is not None:
        return existing
    await check_folder(session, principal, body.folder_id)
    if await name_taken(session, RobotGroup.name, body.name, RobotGroup.account_id == principal.account_id):
        raise Conflict(f"a robot group named {body.name!r} already exists", field="name")
    robot_ids = await visible_robot_ids(session, principal, body.robot_ids, "robot_ids")
    group = RobotGroup(
        id=group_id,
        account_id=principal.account_id,
        folder_id=body.folder_id,
        name=body.name,
        description=body.description,
    )
    session.add(group)
    await flush_or_conflict(session, f"a robot group named {body.name!r} already exists", "name")
    for rid in robot_ids:
        session.add(RobotGroupMember(group_id=group.id, robot_id=rid))
    await session.flush()
    record(session, principal, "create", "robot_group", group.id, body.model_dump(mode="json"))
    return group


async def update_group(
    session: AsyncSession, principal: Principal, group_id: uuid.UUID, body: schemas.RobotGroupUpdate
) -> RobotGroup:
    fields = body.model_dump(exclude_unset=True)
    require_not_null(fields, "name", "description")
    group = await get_group(session, principal, group_id, lock=True)
    await check_name_and_folder(session, principal, group, fields, "a robot group")
    changes = apply_patch(group, fields)
    if changes:
        await flush_or_conflict(session, "a robot group with this name already exists", "name")
        record(session, principal, "update", "robot_group", group.id, changes)
    return group


async def delete_group(session: AsyncSession, principal: Principal, group_id: uuid.UUID) -> None:
    group = await get_group(session, principal, group_id, lock=True)
    if await unfinished_jobs(session, Job.robot_group_id == group.id, Job.robot_id.is_(None)):
        raise Conflict("jobs waiting for a robot of this group are not finished")
    record(session, principal, "delete", "robot_group", group.id, {"name": group.name})
    await session.delete(group)
    await session.flush()


async def replace_members(
    session: AsyncSession, principal: Principal, group_id: uuid.UUID, robot_ids: Sequence[uuid.UUID]
) -> RobotGroup:
    group = await get_group(session, principal, group_id, lock=True)
    wanted = await visible_robot_ids(session, principal, robot_ids, "robot_ids")
    current = set(
        (
            await session.execute(
                sa.select(RobotGroupMember.robot_id).where(RobotGroupMember.group_id == group.id)
            )
        )
        .scalars()
        .all()
    )
    removed = current - set(wanted)
    added = [rid for rid in wanted if rid not in current]
    if removed:
        await session.execute(
            sa.delete(RobotGroupMember).where(
                RobotGroupMember.group_id == group.id, RobotGroupMember.robot_id.in_(removed)
            )
        )
    for rid in added:
        session.add(RobotGroupMember(group_id=group.id, robot_id=rid))
    await session.flush()
    if added or removed:
        record(
            session,
            principal,
            "update_members",
            "robot_group",
            group.id,
            {"added": [str(r) for r in added], "removed": sorted(str(r) for r in removed)},
        )
    return group


async def add_member(
    session: AsyncSession, principal: Principal, group_id: uuid.UUID, robot_id: uuid.UUID
) -> RobotGroup:
    group = await get_group(session, principal, group_id, lock=True)
    robot = await get_robot(session, principal, robot_id)
    if await session.get(RobotGroupMember, (group.id, robot.id)) is None:
        session.add(RobotGroupMember(group_id=group.id, robot_id=robot.id))
        await session.flush()
        record(session, principal, "add_member", "robot_group", group.id, {"robot_id": str(robot.id)})
    return group


async def remove_member(
    session: AsyncSession, principal: Principal, group_id: uuid.UUID, robot_id: uuid.UUID
) -> None:
    group = await get_group(session, principal, group_id, lock=True)
    robot = await get_robot(session, principal, robot_id)
    member = await session.get(RobotGroupMember, (group.id, robot.id))
    if member is None:
        raise NotFound(f"robot {robot_id} is not a member of this group")
    await session.delete(member)
    await session.flush()
    record(session, principal, "remove_member", "robot_group", group.id, {"robot_id": str(robot.id)})
