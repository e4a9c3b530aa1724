"""Calendar endpoints: working and non-working days in a time zone (checked against the IANA zones).

A change to a calendar reaches robots watching a Calendar resource that uses it (``ResourceChanged``).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.calendars import schemas, service
from rpa_api.deps import Ctx, Principal, Transaction, require
from rpa_api.kit.names import contains
from rpa_api.kit.pagination import Page, PageParams, paginate, sorted_by
from rpa_common.models import Calendar
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O
from rpa_common.nats import subjects
from rpa_common.nats.messages import ResourceChanged

router = APIRouter()

_SORTABLE = {"name": Calendar.name, "created_at": Calendar.created_at, "updated_at": Calendar.updated_at}

Read = Annotated[Principal, Depends(require(O.CALENDARS, A.READ))]
Create = Annotated[Principal, Depends(require(O.CALENDARS, A.CREATE))]
Update = Annotated[Principal, Depends(require(O.CALENDARS, A.UPDATE))]
Delete = Annotated[Principal, Depends(require(O.CALENDARS, A.DELETE))]


@router.post("/calendars", status_code=201, summary="Create a calendar", responses={409: {}})
async def create_calendar(
    body: schemas.CalendarCreate, tx: Transaction, principal: Create
) -> schemas.CalendarDetail:
    calendar_id = uuid.uuid4()

    async def work(session: AsyncSession) -> schemas.CalendarDetail:
        return await service.calendar_detail(
            session, await service.create_calendar(session, principal, calendar_id, body)
        )

    return await tx.run(work)


@router.get("/calendars", summary="List calendars")
async def list_calendars(
    tx: Transaction,
    paging: Annotated[PageParams, Depends(sorted_by(*_SORTABLE))],
    principal: Read,
    name: Annotated[str | None, Query(max_length=100, description="Name contains (any case)")] = None,
    folder_id: uuid.UUID | None = None,
) -> Page[schemas.CalendarOut]:
    async def work(session: AsyncSession) -> Page[schemas.CalendarOut]:
        stmt = service.calendars_query(principal)
        if name:
            stmt = stmt.where(contains(Calendar.name, name))
        if folder_id is not None:
            stmt = stmt.where(Calendar.folder_id == folder_id)
        rows, total = await paginate(session, stmt, paging, _SORTABLE, "name", columns_of=schemas.CalendarOut)
        return Page[schemas.CalendarOut](
            items=[schemas.CalendarOut.model_validate(r) for r in rows],
            total=total,
            limit=paging.limit,
            offset=paging.offset,
        )

    return await tx.read(work)


@router.get("/calendars/{calendar_id:uuid}", summary="A calendar, with its exception days")
async def get_calendar(calendar_id: uuid.UUID, tx: Transaction, principal: Read) -> schemas.CalendarDetail:
    async def work(session: AsyncSession) -> schemas.CalendarDetail:
        return await service.calendar_detail(
            session, await service.get_calendar(session, principal, calendar_id)
        )

    return await tx.read(work)


@router.patch(
    "/calendars/{calendar_id:uuid}",
    summary="Change a calendar (days: replaces them all)",
    responses={409: {}},
)
async def update_calendar(
    calendar_id: uuid.UUID, body: schemas.CalendarUpdate, tx: Transaction, ctx: Ctx, principal: Update
) -> schemas.CalendarDetail:
    async def work(session: AsyncSession) -> tuple[schemas.CalendarDetail, list[tuple[uuid.UUID, str]]]:
        cal = await service.update_calendar(session, principal, calendar_id, body)
        return await service.calendar_detail(session, cal), await service.resources_using(session, cal.id)

    out, used_by = await tx.run(work)
    for resource_id, name in used_by:
        message = ResourceChanged(account_id=principal.account_id, resource_id=resource_id, name=name)
        await ctx.publish(subjects.RESOURCE_CHANGED, message.encode())
    return out


@router.delete(
    "/calendars/{calendar_id:uuid}",
    status_code=204,
    summary="Delete a calendar (refused while resources or triggers use it)",
    responses={409: {}},
)
async def delete_calendar(calendar_id: uuid.UUID, tx: Transaction, principal: Delete) -> Response:
    await tx.run(lambda session: service.delete_calendar(session, principal, calendar_id))
    return Response(status_code=204)
