"""Robots endpoints: create (the key is shown once), list, read, change, delete, rotate the key."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Ctx, Principal, Transaction, require
from rpa_api.kit.pagination import Page, PageParams, page_json, paginate, sorted_by
from rpa_api.robots import schemas, service
from rpa_common.models import Robot
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O
from rpa_common.models.enums import RobotRole, RobotStatus
from rpa_common.nats import subjects
from rpa_common.nats.messages import RobotChanged
from rpa_common.security import make_key
from rpa_common.service import ServiceContext

router = APIRouter()

_SORTABLE = {
    "name": Robot.name,
    "created_at": Robot.created_at,
    "updated_at": Robot.updated_at,
    "status": Robot.status,
    "role": Robot.role,
    "last_heartbeat_at": Robot.last_heartbeat_at,
}
_NO_STORE = {"Cache-Control": "no-store"}


async def _robot_changed(ctx: ServiceContext, robot: Robot, change: str) -> None:
    msg = RobotChanged(account_id=robot.account_id, robot_id=robot.id, change=change)
    await ctx.publish(subjects.ROBOT_CHANGED, msg.encode())


@router.post(
    "/robots",
    status_code=201,
    summary="Create a robot; its key is in this answer only",
    responses={409: {"description": "name taken"}, 422: {"description": "invalid field"}},
)
async def create_robot(
    body: schemas.RobotCreate,
    tx: Transaction,
    response: Response,
    principal: Annotated[Principal, Depends(require(O.ROBOTS, A.CREATE))],
) -> schemas.RobotWithKey:
    robot_id = uuid.uuid4()
    key = make_key(service.ROBOT_KEY_KIND)

    async def work(session: AsyncSession) -> schemas.RobotDetail:
        robot = await service.create_robot(session, principal, robot_id, key, body)
        return await service.robot_detail(session, robot)

    detail = await tx.run(work)
    response.headers.update(_NO_STORE)
    return schemas.RobotWithKey(**detail.model_dump(), key=key.full)


@router.get("/robots", response_model=Page[schemas.RobotOut], summary="List robots")
async def list_robots(
    tx: Transaction,
    paging: Annotated[PageParams, Depends(sorted_by(*_SORTABLE))],
    principal: Annotated[Principal, Depends(require(O.ROBOTS, A.READ))],
    status: Annotated[list[RobotStatus] | None, Query(description="Any of these statuses")] = None,
    role: Annotated[list[RobotRole] | None, Query(description="Any of these roles")] = None,
    is_active: bool | None = None,
    name: Annotated[str | None, Query(max_length=100, description="Name contains (any case)")] = None,
    folder_id: uuid.UUID | None = None,
    group_id: Annotated[uuid.UUID | None, Query(description="Members of this robot group")] = None,
) -> Response:
    async def work(session: AsyncSession) -> Response:
        stmt = service.list_robots_query(
            principal,
            status=status,
            role=role,
            is_active=is_active,
            name=name,
            folder_id=folder_id,
            group_id=group_id,
        )
        rows, total = await paginate(
            session, stmt, paging, _SORTABLE, "-created_at", columns_of=schemas.RobotOut
        )
        return page_json(schemas.RobotOut, rows, total, paging)

    return await tx.read(work)


@router.get("/robots/{robot_id:uuid}", summary="A robot, with its groups")
async def get_robot(
    robot_id: uuid.UUID,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.ROBOTS, A.READ))],
) -> schemas.RobotDetail:
    async def work(session: AsyncSession) -> schemas.RobotDetail:
        robot = await service.get_robot(session, principal, robot_id)
        return await service.robot_detail(session, robot)

    return await tx.read(work)


@router.patch(
    "/robots/{robot_id:uuid}",
    summary="Change a robot; is_active=false tells a connected robot to stop",
    responses={409: {"description": "name taken, or the role is still needed"}},
)
async def update_robot(
    robot_id: uuid.UUID,
    body: schemas.RobotUpdate,
    tx: Transaction,
    ctx: Ctx,
    principal: Annotated[Principal, Depends(require(O.ROBOTS, A.UPDATE))],
) -> schemas.RobotDetail:
    async def work(session: AsyncSession) -> tuple[Robot, str | None, schemas.RobotDetail]:
        robot, event = await service.update_robot(session, principal, robot_id, body)
        return robot, event, await service.robot_detail(session, robot)

    robot, event, detail = await tx.run(work)
    if event is not None:
        await _robot_changed(ctx, robot, event)
    return detail


@router.delete(
    "/robots/{robot_id:uuid}",
    status_code=204,
    summary="Delete a robot (refused while it has unfinished jobs)",
    responses={409: {"description": "the robot has unfinished jobs"}},
)
async def delete_robot(
    robot_id: uuid.UUID,
    tx: Transaction,
    ctx: Ctx,
    principal: Annotated[Principal, Depends(require(O.ROBOTS, A.DELETE))],
) -> Response:
    await tx.run(lambda session: service.delete_robot(session, principal, robot_id))
    msg = RobotChanged(account_id=principal.account_id, robot_id=robot_id, change="deleted")
    await ctx.publish(subjects.ROBOT_CHANGED, msg.encode())
    return Response(status_code=204)


@router.post(
    "/robots/{robot_id:uuid}/rotate-key",
    summary="Give the robot a new key (shown once); the old one stops working",
)
async def rotate_key(
    robot_id: uuid.UUID,
    tx: Transaction,
    ctx: Ctx,
    response: Response,
    principal: Annotated[Principal, Depends(require(O.ROBOTS, A.UPDATE))],
) -> schemas.RobotWithKey:
    key = make_key(service.ROBOT_KEY_KIND)

    async def work(session: AsyncSession) -> tuple[Robot, schemas.RobotDetail]:
        robot = await service.rotate_robot_key(session, principal, robot_id, key)
        return robot, await service.robot_detail(session, robot)

    robot, detail = await tx.run(work)
    await _robot_changed(ctx, robot, "key_rotated")
    response.headers.update(_NO_STORE)
    return schemas.RobotWithKey(**detail.model_dump(), key=key.full)
