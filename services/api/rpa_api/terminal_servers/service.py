"""Terminal servers and their unattended accounts: rules and queries.

Functions here run inside the request's unit of work and only ``flush``. Terminal servers are
scoped to the caller's account (they carry no folder). An unattended account's password is
encrypted before it is stored and never read back here.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal
from rpa_api.kit.audit import record
from rpa_api.kit.folders import check_name_and_folder
from rpa_api.kit.lookup import get_owned
from rpa_api.kit.names import flush_or_conflict, name_taken
from rpa_api.kit.patch import apply_patch, require_not_null
from rpa_api.robots.service import check_robot_of_role
from rpa_api.terminal_servers import schemas
from rpa_common.errors import Conflict, NotFound
from rpa_common.models import TerminalServer, TerminalSession, UnattendedAccount
from rpa_common.models.enums import RobotRole, SessionState
from rpa_common.secrets import encrypt_unattended_password
from rpa_common.settings import Settings

_OPEN_SESSION_STATES = (
    SessionState.REQUESTED,
    SessionState.CONNECTING,
    SessionState.LOGGED_ON,
    SessionState.ROBOT_CONNECTED,
    SessionState.LOGGING_OFF,
)


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
        await check_robot_of_role(
            session, principal, body.coordinator_id, RobotRole.COORDINATOR, "coordinator_id"
        )
    if await name_taken(
        session, TerminalServer.name, body.name, TerminalServer.account_id == principal.account_id
    ):
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
    require_not_null(fields, *schemas.TerminalServerUpdate.not_null)
    server = await get_server(session, principal, server_id, lock=True)
    await check_name_and_folder(session, principal, server, fields, "a terminal server")
    if fields.get("coordinator_id") is not None and fields["coordinator_id"] != server.coordinator_id:
        await check_robot_of_role(
            session, principal, fields["coordinator_id"], RobotRole.COORDINATOR, "coordinator_id"
        )
    changes = apply_patch(server, fields)
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
    await check_robot_of_role(session, principal, robot_id, RobotRole.UNATTENDED, "robot_id")
    stmt = sa.select(UnattendedAccount.id).where(UnattendedAccount.robot_id == robot_id)
    if but is not None:
        stmt = stmt.where(UnattendedAccount.id != but)
    if await session.scalar(stmt) is not None:
        raise Conflict("this robot is already bound to another unattended account", field="robot_id")


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
    if await name_taken(
        session, UnattendedAccount.login, body.login, UnattendedAccount.terminal_server_id == server.id
    ):
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
        and await name_taken(
            session,
            UnattendedAccount.login,
            fields["login"],
            UnattendedAccount.terminal_server_id == ua.terminal_server_id,
            but=ua.id,
        )
    ):
        raise Conflict(f"login {fields['login']!r} already exists on this terminal server", field="login")
    if fields.get("robot_id") is not None and fields["robot_id"] != ua.robot_id:
        await _check_unattended_robot(session, principal, fields["robot_id"], ua.id)
    changes = apply_patch(ua, fields)
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
