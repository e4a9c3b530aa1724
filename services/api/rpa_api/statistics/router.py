"""Statistics endpoints: read-only figures for dashboards over a time range, bucketed by hour or day.

Each needs ``statistics:read`` and counts only the caller's account, and within it only what the
caller's folders show (jobs through their process, robots and queues through their own folder).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated

import pydantic_core
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal, Transaction, require
from rpa_api.kit.schemas import QueryDatetime
from rpa_api.openapi import errors
from rpa_api.statistics import schemas, service
from rpa_common.db.engine import dialect_of
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O

router = APIRouter(prefix="/statistics")

Reader = Annotated[Principal, Depends(require(O.STATISTICS, A.READ))]
From = Annotated[
    QueryDatetime,
    Query(
        alias="from",
        description="Start of the range, included, before `to` (ISO 8601; UTC if no zone; years 1900-9998)",
    ),
]
To = Annotated[
    QueryDatetime,
    Query(
        description="End of the range, excluded; at most 31 days after `from` by hour, 366 by day (ISO 8601; UTC if no zone)"
    ),
]
BucketQ = Annotated[
    schemas.Bucket,
    Query(description="hour (a range of 31 days at most) or day (366 days at most); UTC"),
]
GroupQ = Annotated[
    schemas.Group, Query(description="One row per bucket and process, or per bucket and robot")
]

_ERRORS = errors(s422="from not before to, a range too wide for the bucket, an unknown bucket or group")
_PG_SET = sa.text(
    "SELECT set_config('plan_cache_mode', 'force_custom_plan', false), set_config('jit', 'off', false)"
)
_PG_RESET = sa.text(
    "SELECT set_config(name, reset_val, false) FROM pg_settings WHERE name IN ('plan_cache_mode', 'jit')"
)


async def _read(
    tx: Transaction,
    principal: Principal,
    start: datetime,
    end: datetime,
    bucket: str,
    query: Callable[..., Awaitable[service.Answer]],
) -> Response:
    """The answer, plain data shaped as the route's ``response_model``, serialised once, straight to
    JSON: a month by the hour is thousands of rows, and FastAPI's own path (validate, to a dict, then
    ``json.dumps``) costs more than the query."""
    w = service.window(start, end, bucket)

    async def work(session: AsyncSession) -> service.Answer:
        if dialect_of(session) != "postgresql":
            return await query(session, principal, w)
        # A plan for the range asked: after five runs of one prepared statement PostgreSQL may switch
        # to a generic plan, blind to the range's width (a month read as if a few rows: 450 ms instead
        # of 60 in bench/stats.py). No JIT compilation: these statements are estimated costly (a row
        # per interval and bucket) but run in tens of ms, and compiling them takes 30. Reads run
        # without a transaction, so set, then reset for the connection's next user.
        await session.execute(_PG_SET)
        try:
            return await query(session, principal, w)
        finally:
            with contextlib.suppress(Exception):  # never hide the query's own error
                await session.execute(_PG_RESET)

    answer = await tx.read(work)
    return Response(pydantic_core.to_json(answer), media_type="application/json")


@router.get(
    "/jobs",
    summary="Jobs by state, per process or robot, by the hour or day they were created",
    responses=_ERRORS,
    response_model=schemas.JobStates,
)
async def jobs_by_state(
    tx: Transaction,
    principal: Reader,
    start: From,
    to: To,
    bucket: BucketQ = "hour",
    group: GroupQ = "process",
) -> Response:
    return await _read(tx, principal, start, to, bucket, lambda s, p, w: service.job_states(s, p, w, group))


@router.get(
    "/jobs/success-rate",
    summary="Share of finished jobs that succeeded, per process or robot and bucket",
    responses=_ERRORS,
    response_model=schemas.SuccessRates,
)
async def jobs_success_rate(
    tx: Transaction,
    principal: Reader,
    start: From,
    to: To,
    bucket: BucketQ = "hour",
    group: GroupQ = "process",
) -> Response:
    return await _read(
        tx, principal, start, to, bucket, lambda s, p, w: service.success_rates(s, p, w, group)
    )


@router.get(
    "/jobs/durations",
    summary="Run time of ended jobs, median and 95th percentile, per process or robot and bucket",
    responses=_ERRORS,
    response_model=schemas.Durations,
)
async def jobs_durations(
    tx: Transaction,
    principal: Reader,
    start: From,
    to: To,
    bucket: BucketQ = "hour",
    group: GroupQ = "process",
) -> Response:
    exact = tx.ctx.settings.statistics_exact_durations_h
    return await _read(
        tx, principal, start, to, bucket, lambda s, p, w: service.durations(s, p, w, group, exact)
    )


@router.get(
    "/robots/utilisation",
    summary="Time each robot was Working over the time it was connected, per bucket",
    responses=_ERRORS,
    response_model=schemas.Utilisation,
)
async def robots_utilisation(
    tx: Transaction, principal: Reader, start: From, to: To, bucket: BucketQ = "hour"
) -> Response:
    return await _read(tx, principal, start, to, bucket, service.utilisation)


@router.get(
    "/queues",
    summary="Tasks added and ended (throughput) and waiting (backlog), per queue and bucket",
    responses=_ERRORS,
    response_model=schemas.QueueFigures,
)
async def queues(
    tx: Transaction, principal: Reader, start: From, to: To, bucket: BucketQ = "hour"
) -> Response:
    return await _read(tx, principal, start, to, bucket, service.queues)
