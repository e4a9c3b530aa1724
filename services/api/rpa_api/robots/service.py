"""Robots, robot groups, terminal servers and unattended accounts: rules and queries.

Functions here run inside the request's unit of work and only ``flush``; the router commits through
``Tx.run``, then publishes. Every lookup is scoped to the caller's account (another account's id is
a 404) and, for objects that carry a folder, to the caller's folders.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.audit import record
from rpa_api.deps import Principal
from rpa_api.lookup import get_owned
from rpa_api.robots import schemas
from rpa_common.errors import Conflict, Forbidden, NotFound, Unprocessable
from rpa_common.models import (
    AccessFolder,
    Job,
    Robot,
    RobotGroup,
    RobotGroupMember,
    TerminalServer,
    TerminalSession,
    UnattendedAccount,
)
from rpa_common.models.enums import FINAL_JOB_STATES, RobotRole, RobotStatus, SessionState
from rpa_common.secrets import encrypt_unattended_password
from rpa_common.security import OpaqueKey
from rpa_common.settings import Settings

ROBOT_KEY_KIND = "rbk"
_OPEN_SESSION_STATES = (
    SessionState.REQUESTED,
    SessionState.OPENING,
    SessionState.OPEN,
    SessionState.ROBOT_CONNECTED,
)


# Shared helpers ----------------------------------------------------------------------------------


async def check_folder(session: AsyncSession, principal: Principal, folder_id: uuid.UUID | None) -> None:
    """``folder_id`` names a folder of the caller's account that the caller may use."""
    if folder_id is not None:
        exists = await session.scalar(
            sa.select(AccessFolder.id).where(
                AccessFolder.id == folder_id, AccessFolder.account_id == principal.account_id
            )
        )
        if exists is None:
            raise Unprocessable(f"folder {folder_id} does not exist", field="folder_id")
    if not principal.may_use_folder(folder_id):
        raise Forbidden("your roles do not give access to this folder", field="folder_id")


def require_not_null(fields: dict[str, Any], *names: str) -> None:
    """PATCH: these fields may be left out, but not set to null."""
    for name in names:
        if name in fields and fields[name] is None:
            raise Unprocessable(f"{name} cannot be null", field=name)


async def flush_or_conflict(session: AsyncSession, detail: str, field: str) -> None:
    """Flush; a unique key hit by a concurrent writer is the same 409 as the check before it."""
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(detail, field=field) from None


def contains(column: Any, text: str) -> sa.ColumnElement[bool]:
    """Case-insensitive substring match, with ``%`` and ``_`` taken literally."""
    result: sa.ColumnElement[bool] = column.icontains(text, autoescape=True)
    return result


# Robots ------------------------------------------------------------------------------------------


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


async def _robot_name_taken(
    session: AsyncSession, account_id: uuid.UUID, name: str, but: uuid.UUID | None = None
) -> bool:
    stmt = sa.select(Robot.id).where(Robot.account_id == account_id, Robot.name == name)
    if but is not None:
        stmt = stmt.where(Robot.id != but)
    return (await session.scalar(stmt)) is not None


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
    if await _robot_name_taken(session, principal.account_id, body.name):
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
    changes: dict[str, Any] = {}
    if (
        "name" in fields
        and fields["name"] != robot.name
        and (await _robot_name_taken(session, principal.account_id, fields["name"], but=robot.id))
    ):
        raise Conflict(f"a robot named {fields['name']!r} already exists", field="name")
    if "folder_id" in fields and fields["folder_id"] != robot.folder_id:
        await check_folder(session, principal, fields["folder_id"])
    if "role" in fields and fields["role"] != robot.role:
        coordinates, bound = await _robot_bindings(session, robot.id)
        if coordinates and fields["role"] != RobotRole.COORDINATOR:
            raise Conflict("this robot coordinates a terminal server; assign another first", field="role")
        if bound and fields["role"] != RobotRole.UNATTENDED:
            raise Conflict("an unattended account uses this robot; unbind it first", field="role")
    for name, value in fields.items():
        if getattr(robot, name) != value:
            changes[name] = {"from": getattr(robot, name), "to": value}
            setattr(robot, name, value)
    event: str | None = None
    if "is_active" in changes:
        event = "activated" if robot.is_active else "deactivated"
    if changes:
        await flush_or_conflict(session, "a robot with this name already exists", "name")
        record(session, principal, "update", "robot", robot.id, changes)
    return robot, event


async def _unfinished_jobs(session: AsyncSession, *where: sa.ColumnElement[bool]) -> int:
    count = await session.scalar(
        sa.select(sa.func.count()).select_from(Job).where(*where, Job.state.not_in(FINAL_JOB_STATES))
    )
    return int(count or 0)


async def delete_robot(session: AsyncSession, principal: Principal, robot_id: uuid.UUID) -> None:
    robot = await get_robot(session, principal, robot_id, lock=True)
    # Pending jobs count too: once the robot is gone they would wait for nobody.
    if robot.current_job_id is not None or await _unfinished_jobs(session, Job.robot_id == robot.id):
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


# Robot groups ------------------------------------------------------------------------------------


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


def group_out(group: RobotGroup, robot_count: int) -> schemas.RobotGroupOut:
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


async def _group_name_taken(
    session: AsyncSession, account_id: uuid.UUID, name: str, but: uuid.UUID | None = None
) -> bool:
    stmt = sa.select(RobotGroup.id).where(RobotGroup.account_id == account_id, RobotGroup.name == name)
    if but is not None:
        stmt = stmt.where(RobotGroup.id != but)
    return (await session.scalar(stmt)) is not None


async def _visible_robot_ids(
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
            raise Unprocessable(f"robot {rid} does not exist", field=field)
    return wanted


async def create_group(
    session: AsyncSession, principal: Principal, group_id: uuid.UUID, body: schemas.RobotGroupCreate
) -> RobotGroup:
    existing = await session.get(RobotGroup, group_id)
    if existing is not None:
        return existing
    await check_folder(session, principal, body.folder_id)
    if await _group_name_taken(session, principal.account_id, body.name):
        raise Conflict(f"a robot group named {body.name!r} already exists", field="name")
    robot_ids = await _visible_robot_ids(session, principal, body.robot_ids, "robot_ids")
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
    if (
        "name" in fields
        and fields["name"] != group.name
        and (await _group_name_taken(session, principal.account_id, fields["name"], but=group.id))
    ):
        raise Conflict(f"a robot group named {fields['name']!r} already exists", field="name")
    if "folder_id" in fields and fields["folder_id"] != group.folder_id:
        await check_folder(session, principal, fields["folder_id"])
    changes: dict[str, Any] = {}
    for name, value in fields.items():
        if getattr(group, name) != value:
            changes[name] = {"from": getattr(group, name), "to": value}
            setattr(group, name, value)
    if changes:
        await flush_or_conflict(session, "a robot group with this name already exists", "name")
        record(session, principal, "update", "robot_group", group.id, changes)
    return group


async def delete_group(session: AsyncSession, principal: Principal, group_id: uuid.UUID) -> None:
    group = await get_group(session, principal, group_id, lock=True)
    if await _unfinished_jobs(session, Job.robot_group_id == group.id, Job.robot_id.is_(None)):
        raise Conflict("jobs waiting for a robot of this group are not finished")
    record(session, principal, "delete", "robot_group", group.id, {"name": group.name})
    await session.delete(group)
    await session.flush()


async def replace_members(
    session: AsyncSession, principal: Principal, group_id: uuid.UUID, robot_ids: Sequence[uuid.UUID]
) -> RobotGroup:
    group = await get_group(session, principal, group_id, lock=True)
    wanted = await _visible_robot_ids(session, principal, robot_ids, "robot_ids")
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


# Terminal servers --------------------------------------------------------------------------------


def servers_query(principal: Principal) -> sa.Select[TerminalServer]:
    return sa.select(TerminalServer).where(TerminalServer.account_id == principal.account_id)


async def get_server(
    session: AsyncSession, principal: Principal, server_id: uuid.UUID, *, lock: bool = False
) -> TerminalServer:
    return await get_owned(
        session,
        servers_query(principal).where(TerminalServer.id == server_id),
        "terminal server",
        server_id,
        lock=lock,
    )


async def _check_robot_of_role(
    session: AsyncSession, principal: Principal, robot_id: uuid.UUID, role: RobotRole, field: str
) -> None:
    robot = await session.scalar(
        sa.select(Robot).where(Robot.id == robot_id, Robot.account_id == principal.account_id)
    )
    if robot is None:
        raise Unprocessable(f"robot {robot_id} does not exist", field=field)
    if robot.role != role:
        raise Unprocessable(
            f"robot {robot.name!r} has role {robot.role.value}, not {role.value}", field=field
        )


async def _server_name_taken(
    session: AsyncSession, account_id: uuid.UUID, name: str, but: uuid.UUID | None = None
) -> bool:
    stmt = sa.select(TerminalServer.id).where(
        TerminalServer.account_id == account_id, TerminalServer.name == name
    )
    if but is not None:
        stmt = stmt.where(TerminalServer.id != but)
    return (await session.scalar(stmt)) is not None


async def server_accounts(session: AsyncSession, server_id: uuid.UUID) -> list[UnattendedAccount]:
    rows = await session.execute(
        sa.select(UnattendedAccount)
        .where(UnattendedAccount.terminal_server_id == server_id)
        .order_by(UnattendedAccount.login)
    )
    return list(rows.scalars())


def account_out(ua: UnattendedAccount) -> schemas.UnattendedAccountOut:
    return schemas.UnattendedAccountOut(
        id=ua.id,
        terminal_server_id=ua.terminal_server_id,
        login=ua.login,
        domain=ua.domain,
        robot_id=ua.robot_id,
        has_password=ua.password_encrypted is not None,
        created_at=ua.created_at,
        updated_at=ua.updated_at,
    )


async def server_detail(session: AsyncSession, server: TerminalServer) -> schemas.TerminalServerDetail:
    accounts = [account_out(ua) for ua in await server_accounts(session, server.id)]
    base = schemas.TerminalServerOut.model_validate(server).model_dump()
    return schemas.TerminalServerDetail.model_validate({**base, "accounts": accounts})


async def create_server(
    session: AsyncSession, principal: Principal, server_id: uuid.UUID, body: schemas.TerminalServerCreate
) -> TerminalServer:
    existing = await session.get(TerminalServer, server_id)
    if existing is not None:
        return existing
    if body.coordinator_id is not None:
        await _check_robot_of_role(
            session, principal, body.coordinator_id, RobotRole.COORDINATOR, "coordinator_id"
        )
    if await _server_name_taken(session, principal.account_id, body.name):
        raise Conflict(f"a terminal server named {body.name!r} already exists", field="name")
    server = TerminalServer(id=server_id, account_id=principal.account_id, **body.model_dump())
    session.add(server)
    await flush_or_conflict(session, f"a terminal server named {body.name!r} already exists", "name")
    record(session, principal, "create", "terminal_server", server.id, body.model_dump(mode="json"))
    return server


async def update_server(
    session: AsyncSession, principal: Principal, server_id: uuid.UUID, body: schemas.TerminalServerUpdate
) -> TerminalServer:
    fields = body.model_dump(exclude_unset=True)
    require_not_null(fields, "name", "hostname", "description", "max_sessions")
    server = await get_server(session, principal, server_id, lock=True)
    if (
        "name" in fields
        and fields["name"] != server.name
        and (await _server_name_taken(session, principal.account_id, fields["name"], but=server.id))
    ):
        raise Conflict(f"a terminal server named {fields['name']!r} already exists", field="name")
    if fields.get("coordinator_id") is not None and fields["coordinator_id"] != server.coordinator_id:
        await _check_robot_of_role(
            session, principal, fields["coordinator_id"], RobotRole.COORDINATOR, "coordinator_id"
        )
    changes: dict[str, Any] = {}
    for name, value in fields.items():
        if getattr(server, name) != value:
            changes[name] = {"from": getattr(server, name), "to": value}
            setattr(server, name, value)
    if changes:
        await flush_or_conflict(session, "a terminal server with this name already exists", "name")
        record(session, principal, "update", "terminal_server", server.id, changes)
    return server


async def _open_sessions(session: AsyncSession, *where: sa.ColumnElement[bool]) -> int:
    count = await session.scalar(
        sa.select(sa.func.count())
        .select_from(TerminalSession)
        .where(*where, TerminalSession.state.in_(_OPEN_SESSION_STATES))
    )
    return int(count or 0)


async def delete_server(session: AsyncSession, principal: Principal, server_id: uuid.UUID) -> None:
    server = await get_server(session, principal, server_id, lock=True)
    if await _open_sessions(session, TerminalSession.terminal_server_id == server.id):
        raise Conflict("sessions are open on this terminal server; wait for them to close")
    record(session, principal, "delete", "terminal_server", server.id, {"name": server.name})
    await session.delete(server)
    await session.flush()


# Unattended accounts -----------------------------------------------------------------------------


def accounts_query(principal: Principal, server_id: uuid.UUID) -> sa.Select[UnattendedAccount]:
    return sa.select(UnattendedAccount).where(
        UnattendedAccount.account_id == principal.account_id,
        UnattendedAccount.terminal_server_id == server_id,
    )


async def get_account(
    session: AsyncSession,
    principal: Principal,
    server_id: uuid.UUID,
    account_id: uuid.UUID,
    *,
    lock: bool = False,
) -> UnattendedAccount:
    await get_server(session, principal, server_id)
    stmt = sa.select(UnattendedAccount).where(
        UnattendedAccount.id == account_id,
        UnattendedAccount.terminal_server_id == server_id,
        UnattendedAccount.account_id == principal.account_id,
    )
    if lock:
        stmt = stmt.with_for_update()
    ua = (await session.execute(stmt)).scalar_one_or_none()
    if ua is None:
        raise NotFound.of("unattended account", account_id)
    return ua


async def _check_unattended_robot(
    session: AsyncSession, principal: Principal, robot_id: uuid.UUID, but: uuid.UUID | None
) -> None:
    await _check_robot_of_role(session, principal, robot_id, RobotRole.UNATTENDED, "robot_id")
    stmt = sa.select(UnattendedAccount.id).where(UnattendedAccount.robot_id == robot_id)
    if but is not None:
        stmt = stmt.where(UnattendedAccount.id != but)
    if await session.scalar(stmt) is not None:
        raise Conflict("this robot is already bound to another unattended account", field="robot_id")


async def _login_taken(
    session: AsyncSession, server_id: uuid.UUID, login: str, but: uuid.UUID | None = None
) -> bool:
    stmt = sa.select(UnattendedAccount.id).where(
        UnattendedAccount.terminal_server_id == server_id, UnattendedAccount.login == login
    )
    if but is not None:
        stmt = stmt.where(UnattendedAccount.id != but)
    return (await session.scalar(stmt)) is not None


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


async def create_account(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    server_id: uuid.UUID,
    ua_id: uuid.UUID,
    body: schemas.UnattendedAccountCreate,
) -> UnattendedAccount:
    server = await get_server(session, principal, server_id, lock=True)
    existing = await session.get(UnattendedAccount, ua_id)
    if existing is not None:
        return existing
    if body.robot_id is not None:
        await _check_unattended_robot(session, principal, body.robot_id, None)
    if await _login_taken(session, server.id, body.login):
        raise Conflict(f"login {body.login!r} already exists on this terminal server", field="login")
    password = _secret(body.password)
    ua = UnattendedAccount(
        id=ua_id,
        account_id=principal.account_id,
        terminal_server_id=server.id,
        robot_id=body.robot_id,
        login=body.login,
        domain=body.domain,
        password_encrypted=(
            None
            if password is None
            else encrypt_unattended_password(settings, principal.account_id, password)
        ),
    )
    session.add(ua)
    await flush_or_conflict(session, "login or robot already used by another unattended account", "login")
    record(
        session,
        principal,
        "create",
        "unattended_account",
        ua.id,
        body.model_dump(mode="json", exclude={"password"})
        | {"terminal_server_id": str(server.id), "has_password": password is not None},
    )
    return ua


async def update_account(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    server_id: uuid.UUID,
    ua_id: uuid.UUID,
    body: schemas.UnattendedAccountUpdate,
) -> UnattendedAccount:
    fields = body.model_dump(exclude_unset=True, exclude={"password"})
    require_not_null(fields, "login")
    ua = await get_account(session, principal, server_id, ua_id, lock=True)
    if (
        "login" in fields
        and fields["login"] != ua.login
        and (await _login_taken(session, ua.terminal_server_id, fields["login"], but=ua.id))
    ):
        raise Conflict(f"login {fields['login']!r} already exists on this terminal server", field="login")
    if fields.get("robot_id") is not None and fields["robot_id"] != ua.robot_id:
        await _check_unattended_robot(session, principal, fields["robot_id"], ua.id)
    changes: dict[str, Any] = {}
    for name, value in fields.items():
        if getattr(ua, name) != value:
            changes[name] = {"from": getattr(ua, name), "to": value}
            setattr(ua, name, value)
    if "password" in body.model_fields_set:
        password = _secret(body.password)
        ua.password_encrypted = (
            None
            if password is None
            else encrypt_unattended_password(settings, principal.account_id, password)
        )
        # Say that it changed, never what to.
        changes["has_password"] = password is not None
        changes["password_changed"] = True
    if changes:
        await flush_or_conflict(session, "robot already bound to another unattended account", "robot_id")
        record(session, principal, "update", "unattended_account", ua.id, changes)
    return ua


async def delete_account(
    session: AsyncSession, principal: Principal, server_id: uuid.UUID, ua_id: uuid.UUID
) -> None:
    ua = await get_account(session, principal, server_id, ua_id, lock=True)
    if await _open_sessions(session, TerminalSession.unattended_account_id == ua.id):
        raise Conflict("a session of this account is open; wait for it to close")
    record(session, principal, "delete", "unattended_account", ua.id, {"login": ua.login})
    await session.delete(ua)
    await session.flush()
