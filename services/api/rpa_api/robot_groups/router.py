"""Robot group endpoints: CRUD and membership (a robot may belong to several groups)."""

from __future__ import annotations

import uuid
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal, Transaction, require
from rpa_api.kit.names import contains
from rpa_api.kit.pagination import Page, PageParams, paginate, sorted_by
from rpa_api.robot_groups import schemas, service
from rpa_common.models import RobotGroup, RobotGroupMember
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O

router = APIRouter()

_SORTABLE = {
    "name": RobotGroup.name,
    "created_at": RobotGroup.created_at,
    "updated_at": RobotGroup.updated_at,
}


@router.post("/robot-groups", status_code=201, summary="Create a robot group", responses={409: {}})
async def create_group(
    body: schemas.RobotGroupCreate,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.ROBOT_GROUPS, A.CREATE))],
) -> schemas.RobotGroupDetail:
    group_id = uuid.uuid4()

    async def work(session: AsyncSession) -> schemas.RobotGroupDetail:
        group = await service.create_group(session, principal, group_id, body)
        return await service.group_detail(session, group)

    return await tx.run(work)


@router.get("/robot-groups", summary="List robot groups")
async def list_groups(
    tx: Transaction,
    paging: Annotated[PageParams, Depends(sorted_by(*_SORTABLE))],
    principal: Annotated[Principal, Depends(require(O.ROBOT_GROUPS, A.READ))],
    name: Annotated[str | None, Query(max_length=100, description="Name contains (any case)")] = None,
    folder_id: uuid.UUID | None = None,
    robot_id: Annotated[uuid.UUID | None, Query(description="Groups this robot belongs to")] = None,
) -> Page[schemas.RobotGroupOut]:
    async def work(session: AsyncSession) -> Page[schemas.RobotGroupOut]:
        stmt = service.groups_query(principal)
        if name:
            stmt = stmt.where(contains(RobotGroup.name, name))
        if folder_id is not None:
            stmt = stmt.where(RobotGroup.folder_id == folder_id)
        if robot_id is not None:
            stmt = stmt.where(
                RobotGroup.id.in_(
                    sa.select(RobotGroupMember.group_id).where(RobotGroupMember.robot_id == robot_id)
                )
            )
        rows, total = await paginate(
            session, stmt, paging, _SORTABLE, "name", columns_of=schemas.RobotGroupOut
        )
        counts = await service.member_counts(session, (g.id for g in rows))
        return Page[schemas.RobotGroupOut](
            items=[service.group_out(g, counts.get(g.id, 0)) for g in rows],
            total=total,
            limit=paging.limit,
            offset=paging.offset,
        )

    return await tx.read(work)


@router.get("/robot-groups/{group_id:uuid}", summary="A robot group, with its robots")
async def get_group(
    group_id: uuid.UUID,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.ROBOT_GROUPS, A.READ))],
) -> schemas.RobotGroupDetail:
    async def work(session: AsyncSession) -> schemas.RobotGroupDetail:
        group = await service.get_group(session, principal, group_id)
        return await service.group_detail(session, group)

    return await tx.read(work)


@router.patch("/robot-groups/{group_id:uuid}", summary="Change a robot group", responses={409: {}})
async def update_group(
    group_id: uuid.UUID,
    body: schemas.RobotGroupUpdate,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.ROBOT_GROUPS, A.UPDATE))],
) -> schemas.RobotGroupDetail:
    async def work(session: AsyncSession) -> schemas.RobotGroupDetail:
        group = await service.update_group(session, principal, group_id, body)
        return await service.group_detail(session, group)

    return await tx.run(work)


@router.delete(
    "/robot-groups/{group_id:uuid}",
    status_code=204,
    summary="Delete a robot group (its robots stay)",
    responses={409: {"description": "jobs still wait for a robot of the group"}},
)
async def delete_group(
    group_id: uuid.UUID,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.ROBOT_GROUPS, A.DELETE))],
) -> Response:
    await tx.run(lambda session: service.delete_group(session, principal, group_id))
    return Response(status_code=204)


@router.put("/robot-groups/{group_id:uuid}/robots", summary="Replace the robots of a group")
async def replace_members(
    group_id: uuid.UUID,
    body: schemas.RobotGroupMembers,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.ROBOT_GROUPS, A.UPDATE))],
) -> schemas.RobotGroupDetail:
    async def work(session: AsyncSession) -> schemas.RobotGroupDetail:
        group = await service.replace_members(session, principal, group_id, body.robot_ids)
        return await service.group_detail(session, group)

    return await tx.run(work)


@router.post(
    "/robot-groups/{group_id:uuid}/robots/{robot_id:uuid}", summary="Add a robot to a group (idempotent)"
)
async def add_member(
    group_id: uuid.UUID,
    robot_id: uuid.UUID,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.ROBOT_GROUPS, A.UPDATE))],
) -> schemas.RobotGroupDetail:
    async def work(session: AsyncSession) -> schemas.RobotGroupDetail:
        group = await service.add_member(session, principal, group_id, robot_id)
        return await service.group_detail(session, group)

    return await tx.run(work)


@router.delete(
    "/robot-groups/{group_id:uuid}/robots/{robot_id:uuid}",
    status_code=204,
    summary="Remove a robot from a group",
)
async def remove_member(
    group_id: uuid.UUID,
    robot_id: uuid.UUID,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.ROBOT_GROUPS, A.UPDATE))],
) -> Response:
    await tx.run(lambda session: service.remove_member(session, principal, group_id, robot_id))
    return Response(status_code=204)
