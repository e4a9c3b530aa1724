"""Terminal server endpoints, and the unattended accounts each server hosts.

An unattended account's password is write-only: it is encrypted at rest and no response carries it
(``has_password`` says whether one is set).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Ctx, Principal, Transaction, require
from rpa_api.kit.names import contains
from rpa_api.kit.pagination import Page, PageParams, paginate, sorted_by
from rpa_api.terminal_servers import schemas, service
from rpa_common.models import TerminalServer, UnattendedAccount
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O

router = APIRouter()

_SORTABLE = {
    "name": TerminalServer.name,
    "hostname": TerminalServer.hostname,
    "created_at": TerminalServer.created_at,
    "updated_at": TerminalServer.updated_at,
}
_ACCOUNT_SORTABLE = {
    "login": UnattendedAccount.login,
    "created_at": UnattendedAccount.created_at,
    "updated_at": UnattendedAccount.updated_at,
}

Read = Annotated[Principal, Depends(require(O.TERMINAL_SERVERS, A.READ))]
Create = Annotated[Principal, Depends(require(O.TERMINAL_SERVERS, A.CREATE))]
Update = Annotated[Principal, Depends(require(O.TERMINAL_SERVERS, A.UPDATE))]
Delete = Annotated[Principal, Depends(require(O.TERMINAL_SERVERS, A.DELETE))]


@router.post("/terminal-servers", status_code=201, summary="Create a terminal server", responses={409: {}})
async def create_server(
    body: schemas.TerminalServerCreate, tx: Transaction, principal: Create
) -> schemas.TerminalServerDetail:
    server_id = uuid.uuid4()

    async def work(session: AsyncSession) -> schemas.TerminalServerDetail:
        server = await service.create_server(session, principal, server_id, body)
        return await service.server_detail(session, server)

    return await tx.run(work)


@router.get("/terminal-servers", summary="List terminal servers")
async def list_servers(
    tx: Transaction,
    paging: Annotated[PageParams, Depends(sorted_by(*_SORTABLE))],
    principal: Read,
    name: Annotated[str | None, Query(max_length=100, description="Name contains (any case)")] = None,
    coordinator_id: uuid.UUID | None = None,
) -> Page[schemas.TerminalServerOut]:
    async def work(session: AsyncSession) -> Page[schemas.TerminalServerOut]:
        stmt = service.servers_query(principal)
        if name:
            stmt = stmt.where(contains(TerminalServer.name, name))
        if coordinator_id is not None:
            stmt = stmt.where(TerminalServer.coordinator_id == coordinator_id)
        rows, total = await paginate(
            session, stmt, paging, _SORTABLE, "name", columns_of=schemas.TerminalServerOut
        )
        return Page[schemas.TerminalServerOut](
            items=[schemas.TerminalServerOut.model_validate(s) for s in rows],
            total=total,
            limit=paging.limit,
            offset=paging.offset,
        )

    return await tx.read(work)


@router.get("/terminal-servers/{server_id:uuid}", summary="A terminal server, with its unattended accounts")
async def get_server(server_id: uuid.UUID, tx: Transaction, principal: Read) -> schemas.TerminalServerDetail:
    async def work(session: AsyncSession) -> schemas.TerminalServerDetail:
        server = await service.get_server(session, principal, server_id)
        return await service.server_detail(session, server)

    return await tx.read(work)


@router.patch("/terminal-servers/{server_id:uuid}", summary="Change a terminal server", responses={409: {}})
async def update_server(
    server_id: uuid.UUID, body: schemas.TerminalServerUpdate, tx: Transaction, principal: Update
) -> schemas.TerminalServerDetail:
    async def work(session: AsyncSession) -> schemas.TerminalServerDetail:
        server = await service.update_server(session, principal, server_id, body)
        return await service.server_detail(session, server)

    return await tx.run(work)


@router.delete(
    "/terminal-servers/{server_id:uuid}",
    status_code=204,
    summary="Delete a terminal server and its unattended accounts (refused while sessions are open)",
    responses={409: {}},
)
async def delete_server(server_id: uuid.UUID, tx: Transaction, principal: Delete) -> Response:
    await tx.run(lambda session: service.delete_server(session, principal, server_id))
    return Response(status_code=204)


# Unattended accounts -----------------------------------------------------------------------------


@router.post(
    "/terminal-servers/{server_id:uuid}/accounts",
    status_code=201,
    summary="Add an unattended account (the password is write-only)",
    responses={409: {"description": "login taken, or the robot is bound to another account"}},
)
async def create_account(
    server_id: uuid.UUID,
    body: schemas.UnattendedAccountCreate,
    tx: Transaction,
    ctx: Ctx,
    principal: Create,
) -> schemas.UnattendedAccountOut:
    ua_id = uuid.uuid4()

    async def work(session: AsyncSession) -> schemas.UnattendedAccountOut:
        ua = await service.create_account(session, ctx.settings, principal, server_id, ua_id, body)
        return service.account_out(ua)

    return await tx.run(work)


@router.get("/terminal-servers/{server_id:uuid}/accounts", summary="List a server's unattended accounts")
async def list_accounts(
    server_id: uuid.UUID,
    tx: Transaction,
    paging: Annotated[PageParams, Depends(sorted_by(*_ACCOUNT_SORTABLE))],
    principal: Read,
    login: Annotated[str | None, Query(max_length=255, description="Login contains (any case)")] = None,
    robot_id: uuid.UUID | None = None,
) -> Page[schemas.UnattendedAccountOut]:
    async def work(session: AsyncSession) -> Page[schemas.UnattendedAccountOut]:
        await service.get_server(session, principal, server_id)
        stmt = service.accounts_query(principal, server_id)
        if login:
            stmt = stmt.where(contains(UnattendedAccount.login, login))
        if robot_id is not None:
            stmt = stmt.where(UnattendedAccount.robot_id == robot_id)
        rows, total = await paginate(session, stmt, paging, _ACCOUNT_SORTABLE, "login")
        return Page[schemas.UnattendedAccountOut](
            items=[service.account_out(ua) for ua in rows],
            total=total,
            limit=paging.limit,
            offset=paging.offset,
        )

    return await tx.read(work)


@router.get("/terminal-servers/{server_id:uuid}/accounts/{account_id:uuid}", summary="An unattended account")
async def get_account(
    server_id: uuid.UUID, account_id: uuid.UUID, tx: Transaction, principal: Read
) -> schemas.UnattendedAccountOut:
    async def work(session: AsyncSession) -> schemas.UnattendedAccountOut:
        return service.account_out(await service.get_account(session, principal, server_id, account_id))

    return await tx.read(work)


@router.patch(
    "/terminal-servers/{server_id:uuid}/accounts/{account_id:uuid}",
    summary="Change an unattended account (password: write-only; null removes it)",
    responses={409: {}},
)
async def update_account(
    server_id: uuid.UUID,
    account_id: uuid.UUID,
    body: schemas.UnattendedAccountUpdate,
    tx: Transaction,
    ctx: Ctx,
    principal: Update,
) -> schemas.UnattendedAccountOut:
    async def work(session: AsyncSession) -> schemas.UnattendedAccountOut:
        ua = await service.update_account(session, ctx.settings, principal, server_id, account_id, body)
        return service.account_out(ua)

    return await tx.run(work)


@router.delete(
    "/terminal-servers/{server_id:uuid}/accounts/{account_id:uuid}",
    status_code=204,
    summary="Delete an unattended account (refused while its session is open)",
    responses={409: {}},
)
async def delete_account(
    server_id: uuid.UUID, account_id: uuid.UUID, tx: Transaction, principal: Delete
) -> Response:
    await tx.run(lambda session: service.delete_account(session, principal, server_id, account_id))
    return Response(status_code=204)
