"""Calendars: rules and queries. A calendar is scoped to the caller's account and folders; its
exception days are replaced as a whole. A calendar that a resource value or a trigger uses cannot
be deleted (409)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.calendars import schemas
from rpa_api.deps import Principal
from rpa_api.kit.audit import record
from rpa_api.kit.folders import check_folder, check_name_and_folder
from rpa_api.kit.lookup import get_owned
from rpa_api.kit.names import flush_or_conflict, name_taken
from rpa_api.kit.patch import apply_patch, require_not_null
from rpa_common.errors import Conflict
from rpa_common.models import Calendar, CalendarDay, Resource, ResourceValue, Trigger


def calendars_query(principal: Principal) -> sa.Select[Calendar]:
    return sa.select(Calendar).where(
        Calendar.account_id == principal.account_id, principal.folder_clause(Calendar.folder_id)
    )


async def get_calendar(
    session: AsyncSession, principal: Principal, calendar_id: uuid.UUID, *, lock: bool = False
) -> Calendar:
    return await get_owned(
        session,
        calendars_query(principal).where(Calendar.id == calendar_id),
        "calendar",
        calendar_id,
        lock=lock,
    )


async def calendar_detail(session: AsyncSession, cal: Calendar) -> schemas.CalendarDetail:
    days = (
        await session.execute(
            sa.select(CalendarDay.day, CalendarDay.working, CalendarDay.note)
            .where(CalendarDay.calendar_id == cal.id)
            .order_by(CalendarDay.day)
        )
    ).all()
    base = schemas.CalendarOut.model_validate(cal).model_dump()
    return schemas.CalendarDetail.model_validate({**base, "days": [d._mapping for d in days]})


async def _replace_days(session: AsyncSession, calendar_id: uuid.UUID, days: list[dict[str, Any]]) -> None:
    await session.execute(sa.delete(CalendarDay).where(CalendarDay.calendar_id == calendar_id))
    for d in days:
        session.add(CalendarDay(calendar_id=calendar_id, day=d["day"], working=d["working"], note=d["note"]))
    await session.flush()


async def create_calendar(
    session: AsyncSession, principal: Principal, calendar_id: uuid.UUID, body: schemas.CalendarCreate
) -> Calendar:
    existing = await session.get(Calendar, calendar_id)
    if existing is not None:
        return existing
    await check_folder(session, principal, body.folder_id)
    taken = f"a calendar named {body.name!r} already exists"
    if await name_taken(session, Calendar.name, body.name, Calendar.account_id == principal.account_id):
        raise Conflict(taken, field="name")
    cal = Calendar(
        id=calendar_id,
        account_id=principal.account_id,
        folder_id=body.folder_id,
        name=body.name,
        description=body.description,
        time_zone=body.time_zone,
        weekend_days=list(body.weekend_days),
    )
    session.add(cal)
    await flush_or_conflict(session, taken, "name")
    await _replace_days(session, cal.id, [d.model_dump() for d in body.days])
    record(
        session,
        principal,
        "create",
        "calendar",
        cal.id,
        body.model_dump(mode="json", exclude={"days"}) | {"days": len(body.days)},
    )
    return cal


async def update_calendar(
    session: AsyncSession, principal: Principal, calendar_id: uuid.UUID, body: schemas.CalendarUpdate
) -> Calendar:
    fields = body.model_dump(exclude_unset=True)
    require_not_null(fields, "name", "description", "time_zone", "weekend_days", "days")
    cal = await get_calendar(session, principal, calendar_id, lock=True)
    fields.pop("days", None)
    # Each day complete (``exclude_unset`` above leaves out a day's defaults).
    days = (
        None
        if body.days is None or "days" not in body.model_fields_set
        else [d.model_dump() for d in body.days]
    )
    await check_name_and_folder(session, principal, cal, fields, "a calendar")
    changes = apply_patch(cal, fields)
    if days is not None:
        await _replace_days(session, cal.id, days)
        changes["days"] = len(days)
    if changes:
        cal.updated_at = datetime.now(UTC)
        await flush_or_conflict(session, "a calendar with this name already exists", "name")
        record(session, principal, "update", "calendar", cal.id, changes)
    return cal


async def resources_using(session: AsyncSession, calendar_id: uuid.UUID) -> list[tuple[uuid.UUID, str]]:
    """(id, name) of the resources with a value on this calendar (robots watching them are told)."""
    rows = await session.execute(
        sa.select(Resource.id, Resource.name).where(
            Resource.id.in_(
                sa.select(ResourceValue.resource_id).where(ResourceValue.calendar_id == calendar_id)
            )
        )
    )
    return [(r.id, r.name) for r in rows]


async def delete_calendar(session: AsyncSession, principal: Principal, calendar_id: uuid.UUID) -> None:
    cal = await get_calendar(session, principal, calendar_id, lock=True)
    if await resources_using(session, cal.id):
        raise Conflict("resource values use this calendar; give them another calendar first")
    if await session.scalar(sa.select(Trigger.id).where(Trigger.calendar_id == cal.id).limit(1)) is not None:
        raise Conflict("triggers use this calendar; change them first")
    record(session, principal, "delete", "calendar", cal.id, {"name": cal.name})
    await session.delete(cal)
    await session.flush()
