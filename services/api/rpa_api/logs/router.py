"""Log endpoints: ``GET /logs`` (every filter), ``GET /jobs/{id}/logs`` (one job's lines) and
``GET /jobs/{id}/logs/stream`` (its live tail, Server-Sent Events).

Lines are read with the ``logs: read`` permission, scoped as the job listing scopes jobs (account,
folders of the process). Pages follow an opaque cursor over (``at``, ``id``) and carry no total.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections import deque
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Ctx, Principal, Transaction, require
from rpa_api.jobs import service as jobs
from rpa_api.kit.schemas import QueryDatetime
from rpa_api.logs import service
from rpa_api.logs.schemas import LogLine, LogPage
from rpa_api.logs.service import Cursor, LogFilter, Order
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Job
from rpa_common.models.enums import JobState
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O
from rpa_common.service import ServiceContext

router = APIRouter()

LogReader = Annotated[Principal, Depends(require(O.LOGS, A.READ))]
TAIL_POLL_S = 0.5
"""The live tail looks for new lines this often."""
TAIL_LOOKBACK = timedelta(seconds=60)
"""How far before its cursor the tail looks for lines stored late (another batch committed after)."""
TAIL_KEEPALIVE_S = 15.0
_BATCH = 500

_PROBLEMS: dict[int | str, dict[str, str]] = {
    401: {"description": "No, a forged or an expired token"},
    403: {"description": "Missing permission (logs: read)"},
    422: {"description": "A filter value is not valid (unknown level, bad time, bad cursor...)"},
}
_JOB_PROBLEMS: dict[int | str, dict[str, str]] = {
    **_PROBLEMS,
    404: {"description": "No such job in your account (or in your folders)"},
}


def log_filters(
    robot_id: uuid.UUID | None = None,
    process_id: uuid.UUID | None = None,
    process_version_id: uuid.UUID | None = None,
    task_id: uuid.UUID | None = None,
    level: Annotated[
        list[str] | None,
        Query(description="Any of these levels (repeatable): Debug, Info, Warning, Error, Critical"),
    ] = None,
    min_level: Annotated[str | None, Query(description="This level and the ones above it")] = None,
    at_from: Annotated[
        QueryDatetime | None,
        Query(alias="from", description="Logged at or after (ISO 8601; UTC if no zone); not after `to`"),
    ] = None,
    at_to: Annotated[
        QueryDatetime | None, Query(alias="to", description="Logged at or before (ISO 8601; UTC if no zone)")
    ] = None,
    text: Annotated[
        str | None,
        Query(
            max_length=service.MAX_TEXT_CHARS,
            description="Lines whose message contains this text (case-insensitive)",
        ),
    ] = None,
) -> LogFilter:
    return LogFilter(
        robot_id=robot_id,
        process_id=process_id,
        process_version_id=process_version_id,
        task_id=task_id,
        levels=level or [],
        min_level=min_level,
        at_from=at_from,
        at_to=at_to,
        text=text or None,
    )


Filters = Annotated[LogFilter, Depends(log_filters)]
Limit = Annotated[int, Query(ge=1, le=1000, description="Lines per page")]
CursorParam = Annotated[
    str | None,
    Query(
        max_length=200,
        description="next_cursor of the previous page, as given (same order); absent: the first page",
    ),
]
OrderParam = Annotated[Order, Query(description="asc: oldest first; desc: newest first")]


@router.get(
    "/logs",
    response_model=LogPage,
    summary="Robot log lines, filtered, in cursor pages",
    responses=_PROBLEMS,
)
async def list_logs(
    tx: Transaction,
    principal: LogReader,
    filters: Filters,
    job_id: uuid.UUID | None = None,
    cursor: CursorParam = None,
    limit: Limit = 100,
    order: OrderParam = "desc",
) -> LogPage:
    filters.job_id = job_id
    where = [*service.scope(principal, filters), *filters.clauses()]
    after = Cursor.decode(cursor) if cursor else None

    async def work(session: AsyncSession) -> LogPage:
        return await service.page(session, where, limit=limit, order=order, cursor=after)

    return await tx.read(work)


@router.get(
    "/jobs/{job_id:uuid}/logs",
    response_model=LogPage,
    summary="The log lines of a job, oldest first, in cursor pages",
    tags=["jobs"],
    responses=_JOB_PROBLEMS,
)
async def job_logs(
    job_id: uuid.UUID,
    tx: Transaction,
    principal: LogReader,
    filters: Filters,
    cursor: CursorParam = None,
    limit: Limit = 100,
    order: OrderParam = "asc",
) -> LogPage:
    filters.job_id = job_id
    where = [*service.scope(principal, filters), *filters.clauses()]
    after = Cursor.decode(cursor) if cursor else None

    async def work(session: AsyncSession) -> LogPage:
        await jobs.get_job(session, principal, job_id)  # 404 for a job the caller cannot see
        return await service.page(session, where, limit=limit, order=order, cursor=after)

    return await tx.read(work)


@router.get(
    "/jobs/{job_id:uuid}/logs/stream",
    summary="Live tail of a job's log lines (Server-Sent Events)",
    tags=["jobs"],
    response_class=StreamingResponse,
    responses={
        **_JOB_PROBLEMS,
        200: {
            "description": "``text/event-stream``: one ``log`` event per line (data: the line as JSON, "
            "id: its cursor, so ``Last-Event-ID`` resumes after it), then ``end`` once the job is final "
            "and every line was sent",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    },
)
async def stream_job_logs(
    job_id: uuid.UUID,
    request: Request,
    ctx: Ctx,
    tx: Transaction,
    principal: LogReader,
    filters: Filters,
    cursor: CursorParam = None,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", max_length=200, description="Resume after this event (its cursor)"),
    ] = None,
) -> StreamingResponse:
    filters.job_id = job_id
    where = [*service.scope(principal, filters), *filters.clauses()]
    start = (
        Cursor.decode(last_event_id, "Last-Event-ID")
        if last_event_id
        else Cursor.decode(cursor)
        if cursor
        else None
    )
    if start is not None and start.order != "asc":
        start = Cursor("asc", start.at, start.id)

    async def check(session: AsyncSession) -> None:
        await jobs.get_job(session, principal, job_id)

    await tx.read(check)  # 404 before the stream starts
    return StreamingResponse(
        _tail(ctx, request, job_id, where, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _event(line: LogLine, cursor: Cursor) -> str:
    return f"id: {cursor.encode()}\nevent: log\ndata: {line.model_dump_json()}\n\n"


async def _tail(
    ctx: ServiceContext,
    request: Request,
    job_id: uuid.UUID,
    where: list[sa.ColumnElement[bool]],
    start: Cursor | None,
) -> AsyncIterator[str]:
    """Follow the cursor; also pick up lines stored late with an earlier ``at`` (``late_lines``),
    each sent once (ids sent recently are remembered); end after the job is final and drained."""
    cursor = start
    sent: set[uuid.UUID] = set()
    recent: deque[tuple[datetime, uuid.UUID]] = deque()  # (received_at, id), oldest first
    newest_received: datetime | None = None
    idle = 0.0
    yield "retry: 1000\n\n"
    while True:
        final = await run_in_transaction(ctx.read_sessions, lambda s: _is_final(s, job_id))

        out = await run_in_transaction(
            ctx.read_sessions,
            functools.partial(_poll, where=where, cursor=cursor, newest_received=newest_received, sent=sent),
        )
        for late, line in out:
            if line.id in sent:
                continue
            if not late:
                # Fresh lines come in the database's (at, id) order (MariaDB orders UUIDs its own way).
                cursor = Cursor("asc", line.at, line.id)
            assert cursor is not None  # a late line is behind a cursor
            sent.add(line.id)
            recent.append((line.received_at, line.id))
            if newest_received is None or line.received_at > newest_received:
                newest_received = line.received_at
            yield _event(line, cursor)
        if newest_received is not None:
            while recent and recent[0][0] < newest_received - TAIL_LOOKBACK / 3:
                sent.discard(recent.popleft()[1])
        if sum(1 for late, _ in out if not late) >= _BATCH:
            continue  # more waiting: no pause
        if final:
            yield "event: end\ndata: {}\n\n"
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(TAIL_POLL_S)
        idle = 0.0 if out else idle + TAIL_POLL_S
        if idle >= TAIL_KEEPALIVE_S:
            idle = 0.0
            yield ": keep-alive\n\n"


async def _poll(
    session: AsyncSession,
    *,
    where: list[sa.ColumnElement[bool]],
    cursor: Cursor | None,
    newest_received: datetime | None,
    sent: set[uuid.UUID],
) -> list[tuple[bool, LogLine]]:
    """(late, line): lines stored late behind the cursor (not sent yet), then the ones after it."""
    fresh = (await service.page(session, where, limit=_BATCH, order="asc", cursor=cursor)).items
    got = [(False, line) for line in fresh]
    if cursor is not None and newest_received is not None:
        since = newest_received - TAIL_LOOKBACK / 6
        late = await service.late_lines(session, where, cursor, TAIL_LOOKBACK, since, _BATCH)
        got = [(True, line) for line in late if line.id not in sent] + got
    return got


async def _is_final(session: AsyncSession, job_id: uuid.UUID) -> bool:
    state = await session.scalar(sa.select(Job.state).where(Job.id == job_id))
    return state is None or JobState(state).is_final
