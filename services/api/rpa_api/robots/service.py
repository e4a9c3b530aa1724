"""Robots: rules and queries.

Functions here run inside the request's unit of work and only ``flush``; the router commits through
``Tx.run``, then publishes. Every lookup is scoped to the caller's account (another account's id is
a 404) and to the caller's folders.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal
from rpa_api.kit.audit import record
from rpa_api.kit.folders import check_folder, check_name_and_folder
from rpa_api.kit.lookup import get_owned
from rpa_api.kit.names import contains, flush_or_conflict, name_taken
from rpa_api.kit.patch import apply_patch, require_not_null
from rpa_api.robots import schemas
from rpa_common.errors import Conflict, NotFound
from rpa_common.models import Job, Robot, RobotGroup, RobotGroupMember, TerminalServer, UnattendedAccount
from rpa_common.models.enums import FINAL_JOB_STATES, RobotRole, RobotStatus
from rpa_common.security import OpaqueKey

ROBOT_KEY_KIND = "rbk"


def robots_query(principal: Principal) -> sa.Select[Robot]:
    return sa.select(Robot).where(
        Robot.account_id == principal.account_id, principal.folder_clause(Robot.folder_id)
    )


async def get_robot(
    session: AsyncSession, principal: Principal, robot_id: uuid.UUID, *, lock: bool = False
) -> Robot:
    return await get_owned(
        session, robots_query(principal).where(Robot.id == robot_id), "robot", robot_id, lock=lock
    )


def list_robots_query(
    principal: Principal,
    *,
    status: Sequence[RobotStatus] | None = None,
    role: Sequence[RobotRole] | None = None,
    is_active: bool | None = None,
    name: str | None = None,
    folder_id: uuid.UUID | None = None,
    group_id: uuid.UUID | None = None,
) -> sa.Select[Robot]:
    stmt = robots_query(principal)
    if status:
        stmt = stmt.where(Robot.status.in_(status))
    if role:
        stmt = stmt.where(Robot.role.in_(role))
    if is_active is not None:
        stmt = stmt.where(Robot.is_active.is_(is_active))
    if name:
        stmt = stmt.where(contains(Robot.name, name))
    if folder_id is not None:
        stmt = stmt.where(Robot.folder_id == folder_id)
    if group_id is not None:
        stmt = stmt.where(
            Robot.id.in_(sa.select(RobotGroupMember.robot_id).where(RobotGroupMember.group_id == group_id))
        )
    return stmt


async def robot_groups(session: AsyncSession, robot_id: uuid.UUID) -> list[RobotGroup]:
    rows = await session.execute(
        sa.select(RobotGroup)
        .join(RobotGroupMember, RobotGroupMember.group_id == RobotGroup.id)
        .where(RobotGroupMember.robot_id == robot_id)
        .order_by(RobotGroup.name)
    )
    return list(rows.scalars())


async def robot_detail(session: AsyncSession, robot: Robot) -> schemas.RobotDetail:
    groups = await robot_groups(session, robot.id)
    return schemas.RobotDetail.model_validate(
        {**schemas.RobotOut.model_validate(robot).model_dump(), "groups": groups}
    )


async def create_robot(
    session: AsyncSession,
    principal: Principal,
    robot_id: uuid.UUID,
    key: OpaqueKey,
    body: schemas.RobotCreate,
) -> Robot:
    existing = await session.get(Robot, robot_id)
    if existing is not None:  # a re-run after a commit that did happen
        return existing
    await check_folder(session, principal, body.folder_id)
    if await name_taken(session, Robot.name, body.name, Robot.account_id == principal.account_id):
        raise Conflict(f"a robot named {body.name!r} already exists", field="name")
    robot = Robot(
        id=robot_id,
        account_id=principal.account_id,
        folder_id=body.folder_id,
        name=body.name,
        description=body.description,
        role=body.role,
        is_active=body.is_active,
        status=RobotStatus.DISCONNECTED,
        key_prefix=key.prefix,
        key_hash=key.hash,
    )
    session.add(robot)
    await flush_or_conflict(session, f"a robot named {body.name!r} already exists", "name")
    record(
        session,
        principal,
        "create",
        "robot",
        robot.id,
        body.model_dump(mode="json") | {"key_prefix": key.prefix},
    )
    return robot


async def _robot_bindings(session: AsyncSession, robot_id: uuid.UUID) -> tuple[bool, bool]:
    """Whether the robot coordinates a terminal server, and whether an unattended account uses it."""
    coordinates = await session.scalar(
        sa.select(TerminalServer.id).where(TerminalServer.coordinator_id == robot_id).limit(1)
    )
    bound = await session.scalar(
        sa.select(UnattendedAccount.id).where(UnattendedAccount.robot_id == robot_id).limit(1)
    )
    return coordinates is not None, bound is not None


async def update_robot(
    session: AsyncSession, principal: Principal, robot_id: uuid.UUID, body: schemas.RobotUpdate
) -> tuple[Robot, str | None]:
    """Apply a PATCH; returns the robot and the ``RobotChanged`` change to publish, if any."""
    fields = body.model_dump(exclude_unset=True)
    require_not_null(fields, "name", "description", "role", "is_active")
    robot = await get_robot(session, principal, robot_id, lock=True)
    await check_name_and_folder(session, principal, robot, fields, "a robot")
    if "role" in fields and fields["role"] != robot.role:
        coordinates, bound = await _robot_bindings(session, robot.id)
        if coordinates and fields["role"] != RobotRole.COORDINATOR:
            raise Conflict("this robot coordinates a terminal server; assign another first", field="role")
        if bound and fields["role"] != RobotRole.UNATTENDED:
            raise Conflict("an unattended account uses this robot; unbind it first", field="role")
    changes = apply_patch(robot, fields)
    event: str | None = None
    if "is_active" in changes:
        event = "activated" if robot.is_active else "deactivated"
    if changes:
        await flush_or_conflict(session, "a robot with this name already exists", "name")
        record(session, principal, "update", "robot", robot.id, changes)
    return robot, event


async def unfinished_jobs(session: AsyncSession, *where: sa.ColumnElement[bool]) -> int:
    """How many jobs matching ``where`` have not reached a final state."""
    count = await session.scalar(
        sa.select(sa.func.count()).select_from(Job).where(*where, Job.state.not_in(FINAL_JOB_STATES))
    )
    return int(count or 0)


async def delete_robot(session: AsyncSession, principal: Principal, robot_id: uuid.UUID) -> None:
    robot = await get_robot(session, principal, robot_id, lock=True)
    # Pending jobs count too: once the robot is gone they would wait for nobody.
    if robot.current_job_id is not None or await unfinished_jobs(session, Job.robot_id == robot.id):
        raise Conflict("the robot has jobs that are not finished; stop them or wait for them first")
    record(session, principal, "delete", "robot", robot.id, {"name": robot.name})
    await session.delete(robot)
    await session.flush()


async def rotate_robot_key(
    session: AsyncSession, principal: Principal, robot_id: uuid.UUID, key: OpaqueKey
) -> Robot:
    robot = await get_robot(session, principal, robot_id, lock=True)
    if robot.key_prefix == key.prefix:  # a re-run after a commit that did happen
        return robot
    old_prefix = robot.key_prefix
    robot.key_prefix = key.prefix
    robot.key_hash = key.hash
    await session.flush()
    record(
        session,
        principal,
        "rotate_key",
        "robot",
        robot.id,
        {"key_prefix": {"from": old_prefix, "to": key.prefix}},
    )
    return robot


# For the domains that refer to robots (groups, terminal servers, unattended accounts) -------------


async def visible_robot_ids(
    session: AsyncSession, principal: Principal, robot_ids: Sequence[uuid.UUID], field: str
) -> list[uuid.UUID]:
    """The given ids, deduplicated in order, each a robot the caller can see (422 naming one otherwise)."""
    wanted = list(dict.fromkeys(robot_ids))
    if not wanted:
        return []
    found = set(
        (
            await session.execute(
                robots_query(principal).with_only_columns(Robot.id).where(Robot.id.in_(wanted))
            )
        )
        .scalars()
        .all()
    )
    for rid in wanted:
        if rid not in found:
            raise NotFound(f"robot {rid} does not exist", field=field)
    return wanted


async def check_robot_of_role(
    session: AsyncSession, principal: Principal, robot_id: uuid.UUID, role: RobotRole, field: str
) -> None:
    """``robot_id`` is a robot of the caller's account (else 404) with ``role`` (else 409: the robot's
    role is its current state, which a PATCH may change), naming ``field``."""
    row = (
        await session.execute(
            sa.select(Robot.name, Robot.role).where(
                Robot.id == robot_id, Robot.account_id == principal.account_id
            )
        )
    ).first()
    if row is None:
        raise NotFound(f"robot {robot_id} does not exist", field=field)
    if row.role != role:
        raise Conflict(f"robot {row.name!r} has role {row.role.value}, not {role.value}", field=field)
