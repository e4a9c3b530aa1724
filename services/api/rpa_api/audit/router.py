"""Audit endpoints (``audit:read``): the account's records, newest first, and the chain check."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.audit.schemas import AuditPage, AuditRecordOut, AuditVerifyOut
from rpa_api.deps import Principal, Transaction, require
from rpa_api.kit.pagination import MAX_OFFSET
from rpa_api.kit.schemas import QueryDatetime
from rpa_common.audit import verify_account
from rpa_common.errors import Unprocessable
from rpa_common.models import AuditRecord
from rpa_common.models.enums import ActorType
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O

router = APIRouter()

# What both databases store; a bound beyond these selects the same records.
_EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def _bound(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        value = value.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 moved across midnight by its offset
        return _EARLIEST if value.year < 5000 else _LATEST
    return min(max(value, _EARLIEST), _LATEST)


@router.get(
    "/audit",
    response_model=AuditPage,
    summary="The account's audit records, newest first, filtered; pages by cursor",
)
async def list_audit(
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.AUDIT, A.READ))],
    limit: Annotated[int, Query(ge=1, le=500, description="Records per page")] = 50,
    cursor: Annotated[
        int | None, Query(ge=1, le=MAX_OFFSET, description="The next_cursor of the previous page")
    ] = None,
    at_from: Annotated[
        QueryDatetime | None, Query(description="Written at or after (ISO 8601; UTC if no zone)")
    ] = None,
    at_to: Annotated[
        QueryDatetime | None, Query(description="Written at or before (ISO 8601; UTC if no zone)")
    ] = None,
    actor_type: Annotated[
        ActorType | None, Query(description="user, api_key, robot, system or trigger")
    ] = None,
    actor_id: Annotated[uuid.UUID | None, Query(description="The user or robot who acted")] = None,
    kind: Annotated[str | None, Query(max_length=50, description="api, auth or robot")] = None,
    action: Annotated[
        str | None, Query(max_length=50, description="e.g. create, update, delete, login")
    ] = None,
    object_type: Annotated[str | None, Query(max_length=50, description="e.g. robot, process, user")] = None,
    object_id: Annotated[str | None, Query(max_length=100, description="The object's id")] = None,
) -> AuditPage:
    start, end = _bound(at_from), _bound(at_to)
    if start is not None and end is not None and start > end:
        detail = "at_from is after at_to"
        raise Unprocessable(
            detail, errors=[{"field": "at_from", "message": detail}, {"field": "at_to", "message": detail}]
        )

    async def work(session: AsyncSession) -> AuditPage:
        stmt = sa.select(AuditRecord).where(
            AuditRecord.account_id == principal.account_id, AuditRecord.seq.is_not(None)
        )
        if cursor is not None:
            stmt = stmt.where(AuditRecord.seq < cursor)
        if start is not None:
            stmt = stmt.where(AuditRecord.at >= start)
        if end is not None:
            stmt = stmt.where(AuditRecord.at <= end)
        for column, value in (
            (AuditRecord.actor_type, actor_type),
            (AuditRecord.actor_id, actor_id),
            (AuditRecord.kind, kind),
            (AuditRecord.action, action),
            (AuditRecord.object_type, object_type),
            (AuditRecord.object_id, object_id),
        ):
            if value is not None:
                stmt = stmt.where(column == value)
        rows = list((await session.execute(stmt.order_by(AuditRecord.seq.desc()).limit(limit + 1))).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        return AuditPage(
            items=[AuditRecordOut.model_validate(r) for r in rows],
            next_cursor=rows[-1].seq if more and rows else None,
        )

    return await tx.read(work)


@router.get(
    "/audit/verify",
    response_model=AuditVerifyOut,
    summary="Check the account's hash chain: OK with the count, or the first broken link",
)
async def verify(
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.AUDIT, A.READ))],
) -> AuditVerifyOut:
    async def work(session: AsyncSession) -> AuditVerifyOut:
        report = await verify_account(session, principal.account_id)
        return AuditVerifyOut.model_validate(report.as_dict())

    return await tx.read(work)
