"""The statistics queries. Each is one or a few aggregate statements on both databases, over the
scheduler's hourly rollups (``rpa_common.rollups``) where they exist and the rows themselves
elsewhere; Python names the buckets, estimates percentiles from histograms and, for the backlog, adds
up per-bucket changes the database counted. Answers are plain data, encoded once (the router).

Buckets are UTC hours or days. A row's bucket is found in SQL as ``floor(seconds since base / width)``
where ``base`` is the start of the range rounded down to the bucket, so no time-zone setting of the
database session matters. The seconds between two times is the one function that differs by dialect.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import accumulate
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal
from rpa_common.db.engine import dialect_of
from rpa_common.errors import Unprocessable
from rpa_common.models import (
    Job,
    JobRollup,
    JobRollupState,
    Process,
    Queue,
    QueueRollup,
    Robot,
    RobotRollup,
    Task,
    TaskEvent,
)
from rpa_common.models.base import UTCDateTime, utcnow
from rpa_common.models.enums import JobState
from rpa_common.models.stats import HIST_BINS, hist_columns
from rpa_common.rollups import (
    DAY_KINDS,
    NO_ROBOT,
    WAITING_TASK_STATES,
    ceil_day,
    ceil_hour,
    floor_day,
    floor_hour,
    hist_bin,
    hist_percentile,
    robot_time,
    seconds_between,
    task_figures,
)

WIDTH_S = {"hour": 3600, "day": 86400}
MAX_RANGE = {"hour": timedelta(days=31), "day": timedelta(days=366)}
"""The widest range per bucket: 744 hourly or 366 daily buckets at most."""

FINAL_JOB_STATES = tuple(s for s in JobState if s.is_final)
STATE_NAMES = tuple(s.value for s in JobState)
OPEN_JOB_STATES = tuple(s for s in JobState if not s.is_final)
T = TypeVar("T")
Answer = dict[str, Any]
"""An answer as plain data shaped as its schema in ``schemas`` (fields by their JSON names), for
``orjson``: a week by the hour is thousands of rows, and making a model of each costs more than the
query that counted them."""


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    bucket: str
    width: int
    base: datetime
    count: int

    def bucket_start(self, index: int) -> datetime:
        return self.base + timedelta(seconds=index * self.width)

    def starts(self) -> list[datetime]:
        return [max(self.start, self.bucket_start(i)) for i in range(self.count)]

    def answer(self, **fields: Any) -> Answer:
        """The range's fields (``from``, ``to``, ``bucket``, ``buckets``) and ``fields``."""
        return {"from": self.start, "to": self.end, "bucket": self.bucket, "buckets": self.starts(), **fields}


def window(start: datetime, end: datetime, bucket: str) -> Window:
    """The range checked (``from`` before ``to``, not wider than the bucket allows) and its buckets."""
    start = start if start.tzinfo else start.replace(tzinfo=UTC)
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    for name, value in (("from", start), ("to", end)):
        # What both databases store and bucket arithmetic stays inside.
        if not 1900 <= value.year <= 9998:
            detail = f"{name} must be between the years 1900 and 9998"
            raise Unprocessable(detail, errors=[{"field": name, "message": detail}])
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if start >= end:
        detail = "from must be before to"
        raise Unprocessable(
            detail, errors=[{"field": "from", "message": detail}, {"field": "to", "message": detail}]
        )
    if end - start > MAX_RANGE[bucket]:
        detail = f"the range may span at most {MAX_RANGE[bucket].days} days with bucket={bucket}"
        raise Unprocessable(detail, errors=[{"field": "to", "message": detail}])
    width = WIDTH_S[bucket]
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    base = epoch + timedelta(seconds=int((start - epoch).total_seconds()) // width * width)
    count = -(-int((end - base).total_seconds()) // width)  # ceil, whole seconds
    if base + timedelta(seconds=count * width) < end:
        count += 1  # ``end`` has a fraction of a second past a bucket boundary
    return Window(start, end, bucket, width, base, count)


# Dialect helpers ---------------------------------------------------------------------------------


def _at(value: datetime) -> Any:
    return sa.literal(value, UTCDateTime())


def _int4(count: Any) -> Any:
    """A count to be added up again as a 32-bit integer: PostgreSQL adds up bigints in numeric,
    integers in a bigint, several times faster (a week by the hour and robot: 12,000 rows, 10 sums
    each)."""
    return sa.cast(count, sa.Integer)


def _whole_numbers(session: AsyncSession, columns: list[Any]) -> list[Any]:
    """Whole-number columns to select, read back with ``_unpack``: as they are on PostgreSQL; on
    MariaDB one text of them, comma-separated, since aiomysql decodes every value in Python (a week of
    run-time histograms by the hour: 230,000 values, 2 µs each; one text a row: 3,400)."""
    if dialect_of(session) == "postgresql":
        return columns
    return [sa.func.concat_ws(",", *columns).label("packed")]


def _unpack(values: Sequence[Any]) -> list[int]:
    """The whole numbers of ``_whole_numbers``' columns, from a row's values for them."""
    if len(values) == 1 and isinstance(values[0], str):
        return [int(x) for x in values[0].split(",")]
    return list(values)


def _int(total: Any) -> Any:
    """A sum as a whole number: PostgreSQL sums bigints as numeric, MariaDB sums as DECIMAL, and the
    drivers make a ``Decimal`` of each (a week of histograms by the hour: 200,000 of them)."""
    return sa.cast(total, sa.BigInteger)


def bucket_of(session: AsyncSession, w: Window, column: Any) -> Any:
    """The index of the bucket ``column`` falls in (0 for the first)."""
    if dialect_of(session) == "postgresql":
        return sa.cast(sa.func.floor(sa.func.date_part("epoch", column - _at(w.base)) / w.width), sa.Integer)
    return sa.func.timestampdiff(sa.literal_column("SECOND"), _at(w.base), column).op("DIV")(w.width)


# Jobs --------------------------------------------------------------------------------------------


def _group_column(group: str) -> Any:
    return Job.process_id if group == "process" else Job.robot_id


def _jobs_where(principal: Principal, w: Window) -> list[Any]:
    """The caller's account's jobs created in the range, of processes in its folders."""
    where: list[Any] = [
        Job.account_id == principal.account_id,
        Job.created_at >= w.start,
        Job.created_at < w.end,
    ]
    if not principal.all_folders:
        where.append(
            Job.process_id.in_(
                sa.select(Process.id).where(
                    Process.account_id == principal.account_id, principal.folder_clause(Process.folder_id)
                )
            )
        )
    return where


def _keys(group: str, key: str | None) -> dict[str, Any]:
    return {"process_id": key if group == "process" else None, "robot_id": key if group == "robot" else None}


# Rollups: hours the scheduler aggregated (rpa_common.rollups) --------------------------------------


@dataclass(frozen=True)
class Rolled:
    """The whole hours of a range whose final jobs changed before ``cutoff`` are in ``job_rollup``;
    of those, the whole days in ``[day_start, day_end)`` have day rows too (read when bucketing by
    day: a row a day instead of 24)."""

    start: datetime
    end: datetime
    cutoff: datetime
    day_start: datetime
    day_end: datetime


State = tuple[Any, Any, Any]
"""A rollup state row: ``sealed_until``, ``cutoff``, ``days_until``."""


async def _rollup_state(session: AsyncSession, account_id: uuid.UUID) -> State | None:
    row = (
        await session.execute(
            sa.select(JobRollupState.sealed_until, JobRollupState.cutoff, JobRollupState.days_until).where(
                JobRollupState.account_id == account_id
            )
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1], row[2])


def _span(w: Window, state: State | None) -> Rolled | None:
    if state is None or state[0] is None or state[1] is None:
        return None
    start, end = ceil_hour(w.start), min(floor_hour(w.end), state[0])
    if start >= end:
        return None
    day_start, day_end = ceil_day(start), floor_day(end)
    if w.bucket != "day" or state[2] is None or min(day_end, state[2]) <= day_start:
        return Rolled(start, end, state[1], start, start)  # no day rows read
    return Rolled(start, end, state[1], day_start, min(day_end, state[2]))


async def _consistent(
    session: AsyncSession,
    principal: Principal,
    w: Window,
    use: bool,
    compute: Callable[[Rolled | None], Awaitable[T]],
) -> T:
    """``compute`` with the aggregated part of the range, checked to come from one rollup pass: the
    state row read before and after, again if a pass committed in between (its cut-off only grows).
    Without rollups (``use`` false, none yet, or passes all the time) everything is read live."""
    if not use:
        return await compute(None)
    for _ in range(3):
        before = await _rollup_state(session, principal.account_id)
        result = await compute(_span(w, before))
        if before is None or before == await _rollup_state(session, principal.account_id):
            return result
    return await compute(None)


def _live_parts(
    principal: Principal, w: Window, r: Rolled | None, final_only: bool = False
) -> list[list[Any]]:
    """WHERE clauses of the jobs to read live: all of the range without rollups; else the parts of
    the range outside the aggregated hours, and inside them the jobs not final yet and the final
    ones changed since the cut-off (each read by its own index)."""
    where = _jobs_where(principal, w)
    if r is None:
        return [where]
    parts = []
    if w.start < r.start:
        parts.append([*where, Job.created_at < r.start])
    if r.end < w.end:
        parts.append([*where, Job.created_at >= r.end])
    inside = [*where, Job.created_at >= r.start, Job.created_at < r.end]
    if not final_only:
        parts.append([*inside, Job.state.in_(OPEN_JOB_STATES)])
    parts.append([*inside, Job.state.in_(FINAL_JOB_STATES), Job.updated_at >= r.cutoff])
    return parts


def _rollup_parts(principal: Principal, group: str, r: Rolled) -> list[list[Any]]:
    """WHERE clauses of the rollup rows covering ``r``: day rows for its whole days (when the call
    buckets by day and they exist), hourly rows for the hours around them."""
    spans = [(group, r.start, r.day_start), (DAY_KINDS[group], r.day_start, r.day_end)]
    spans.append((group, r.day_end, r.end))
    parts = []
    for kind, start, end in spans:
        if start >= end:
            continue
        where: list[Any] = [
            JobRollup.account_id == principal.account_id,
            JobRollup.kind == kind,
            JobRollup.hour >= start,
            JobRollup.hour < end,
        ]
        if not principal.all_folders:  # group=process only: robot rows do not know the job's folder
            where.append(
                JobRollup.key_id.in_(
                    sa.select(Process.id).where(
                        Process.account_id == principal.account_id, principal.folder_clause(Process.folder_id)
                    )
                )
            )
        parts.append(where)
    return parts


def _union(parts: list[Any]) -> Any:
    union_all: Any = sa.union_all  # (mypy 2.4 crashes inferring its overloads from a list)
    return parts[0] if len(parts) == 1 else union_all(*parts)


def _key(group: str, key: Any) -> str | None:
    """A group's id as text (the answer's form; the driver's UUIDs are no ``uuid.UUID`` to a JSON
    encoder), None for no robot."""
    return None if key is None or (group == "robot" and key == NO_ROBOT) else str(key)


def _use_rollups(principal: Principal, group: str) -> bool:
    # Robot rows have no folder: a role limited to folders, grouping by robot, reads the jobs.
    return principal.all_folders or group == "process"


async def _state_counts(
    session: AsyncSession, principal: Principal, w: Window, group: str
) -> dict[tuple[int, Any], dict[str, int]]:
    """Jobs per (bucket index, group key) and state: rollup rows plus the jobs read live, in one
    statement."""

    async def compute(r: Rolled | None) -> dict[tuple[int, Any], dict[str, int]]:
        idx = bucket_of(session, w, Job.created_at).label("idx")
        key = _group_column(group).label("key")
        parts: list[Any] = [
            sa.select(idx, key, Job.state.label("state"), _int4(sa.func.count()).label("n"))
            .where(*where)
            .group_by(idx, key, Job.state)
            for where in _live_parts(principal, w, r)
        ]
        if r is not None:
            # A rollup row is one (hour or day, key, state) already: the sum below adds them up.
            ridx = bucket_of(session, w, JobRollup.hour).label("idx")
            parts += [
                sa.select(
                    ridx,
                    JobRollup.key_id.label("key"),
                    JobRollup.state.label("state"),
                    JobRollup.jobs.label("n"),
                ).where(*where)
                for where in _rollup_parts(principal, group, r)
            ]
        # Summed and turned into one column per state in SQL: a row per bucket and key comes back,
        # not one per part, bucket, key and state (a week by the hour: 3,400 rows, not 15,000).
        u = _union(parts).subquery("u")
        per_state = [_int(sa.func.sum(sa.case((u.c.state == s, u.c.n), else_=0))) for s in JobState]
        stmt = sa.select(u.c.idx, u.c.key, *_whole_numbers(session, per_state)).group_by(u.c.idx, u.c.key)
        rows: dict[tuple[int, Any], dict[str, int]] = {}
        for idx, k, *values in await session.execute(stmt):
            counts = {name: n for name, n in zip(STATE_NAMES, _unpack(values), strict=True) if n}
            at = (int(idx), _key(group, k))
            if at in rows:  # robot rows' NO_ROBOT and the live jobs' null robot: the same group
                for name, n in counts.items():
                    rows[at][name] = rows[at].get(name, 0) + n
            else:
                rows[at] = counts
        return rows

    return await _consistent(session, principal, w, _use_rollups(principal, group), compute)


async def job_states(session: AsyncSession, principal: Principal, w: Window, group: str) -> Answer:
    """Shaped as ``schemas.JobStates``."""
    rows = await _state_counts(session, principal, w, group)
    starts = w.starts()
    out = [
        {"bucket": starts[i], **_keys(group, k), "counts": counts, "total": sum(counts.values())}
        for (i, k), counts in sorted(rows.items(), key=_order)
    ]
    return w.answer(group=group, rows=out)


def _order(item: tuple[tuple[int, str | None], Any]) -> tuple[int, str]:
    (i, k), _ = item
    return (i, k or "")


async def success_rates(session: AsyncSession, principal: Principal, w: Window, group: str) -> Answer:
    """Shaped as ``schemas.SuccessRates``."""
    rows = await _state_counts(session, principal, w, group)
    starts = w.starts()
    final = {s.value for s in FINAL_JOB_STATES}
    out = []
    for (i, k), counts in sorted(rows.items(), key=_order):
        finished = sum(n for name, n in counts.items() if name in final)
        if not finished:
            continue
        successful = counts.get(JobState.SUCCESSFUL.value, 0)
        out.append(
            {
                "bucket": starts[i],
                **_keys(group, k),
                "finished": finished,
                "successful": successful,
                "success_rate": round(float(successful) / finished, 6),
            }
        )
    return w.answer(group=group, rows=out)


async def durations(
    session: AsyncSession, principal: Principal, w: Window, group: str, exact_hours: int = 48
) -> Answer:
    """Shaped as ``schemas.Durations``. Exact percentiles (PERCENTILE_CONT over every run) for ranges
    up to ``exact_hours``; wider ranges add up the rollups' run-time histograms and estimate them
    (``hist_percentile``: off by less than one histogram bin, under 19 % for runs of 1 s to 12.9 h)."""
    if w.end - w.start <= timedelta(hours=exact_hours) or not _use_rollups(principal, group):
        return await _exact_durations(session, principal, w, group)

    async def compute(r: Rolled | None) -> Answer | None:
        if r is None:
            return None
        return await _histogram_durations(session, principal, w, group, r)

    got = await _consistent(session, principal, w, True, compute)
    return got if got is not None else await _exact_durations(session, principal, w, group)


async def _histogram_durations(
    session: AsyncSession, principal: Principal, w: Window, group: str, r: Rolled
) -> Answer:
    # (bucket index, key) -> [jobs, shortest, longest, bin counts]
    acc: dict[tuple[int, Any], list[Any]] = {}

    def add(i: int, k: Any, n: int, lo: float, hi: float) -> list[Any]:
        at = (i, _key(group, k))
        entry = acc.get(at)
        if entry is None:
            entry = acc[at] = [n, lo, hi, None]  # bins: None until a row gives them
            return entry
        entry[0] += n
        entry[1], entry[2] = min(entry[1], lo), max(entry[2], hi)
        return entry

    ridx = bucket_of(session, w, JobRollup.hour).label("idx")
    rolled = [
        sa.select(
            ridx,
            JobRollup.key_id.label("key"),
            _int(sa.func.sum(JobRollup.timed)).label("n"),
            sa.func.min(JobRollup.d_min).label("lo"),
            sa.func.max(JobRollup.d_max).label("hi"),
            *_whole_numbers(session, [_int(sa.func.sum(c)).label(c.name) for c in hist_columns()]),
        )
        .where(*where, JobRollup.timed > 0)
        .group_by(ridx, JobRollup.key_id)
        for where in _rollup_parts(principal, group, r)
    ]
    for i, k, n, lo, hi, *bins in await session.execute(_union(rolled)):
        entry = add(int(i), k, int(n), float(lo), float(hi))
        got = _unpack(bins)
        entry[3] = got if entry[3] is None else list(map(operator.add, entry[3], got))
    d = seconds_between(session, Job.started_at, Job.ended_at)
    idx = bucket_of(session, w, Job.created_at).label("idx")
    key = _group_column(group).label("key")
    b = hist_bin(d).label("bin")
    parts = [
        sa.select(
            idx, key, b, sa.func.count().label("n"), sa.func.min(d).label("lo"), sa.func.max(d).label("hi")
        )
        .where(
            *where, Job.state.in_(FINAL_JOB_STATES), Job.started_at.is_not(None), Job.ended_at.is_not(None)
        )
        .group_by(idx, key, b)
        for where in _live_parts(principal, w, r, final_only=True)
    ]
    for row in await session.execute(_union(parts)):
        entry = add(int(row.idx), row.key, int(row.n), float(row.lo), float(row.hi))
        if entry[3] is None:
            entry[3] = [0] * HIST_BINS
        entry[3][int(row.bin)] += int(row.n)
    starts = w.starts()
    out = []
    for (i, k), (n, lo, hi, bins) in sorted(acc.items(), key=_order):
        if n <= 0:
            continue
        cum = list(accumulate(bins))
        out.append(
            {
                "bucket": starts[i],
                **_keys(group, k),
                "jobs": n,
                "p50_s": round(hist_percentile(bins, 0.5, lo, hi, cum), 6),
                "p95_s": round(hist_percentile(bins, 0.95, lo, hi, cum), 6),
            }
        )
    return w.answer(group=group, rows=out)


async def _exact_durations(session: AsyncSession, principal: Principal, w: Window, group: str) -> Answer:
    ended = (
        sa.select(
            bucket_of(session, w, Job.created_at).label("idx"),
            _group_column(group).label("key"),
            seconds_between(session, Job.started_at, Job.ended_at).label("d"),
        )
        .where(
            *_jobs_where(principal, w),
            Job.state.in_(FINAL_JOB_STATES),
            Job.started_at.is_not(None),
            Job.ended_at.is_not(None),
        )
        .subquery("ended")
    )
    p50 = sa.func.percentile_cont(0.5).within_group(ended.c.d)
    p95 = sa.func.percentile_cont(0.95).within_group(ended.c.d)
    stmt: Any
    if dialect_of(session) == "postgresql":
        stmt = sa.select(
            ended.c.idx, ended.c.key, sa.func.count().label("n"), p50.label("p50"), p95.label("p95")
        ).group_by(ended.c.idx, ended.c.key)
    else:
        # MariaDB has PERCENTILE_CONT only as a window function: one value per partition, repeated on
        # each of its rows, so the outer query keeps one row per (bucket, group).
        part = (ended.c.idx, ended.c.key)
        per_row = sa.select(
            ended.c.idx,
            ended.c.key,
            sa.func.count().over(partition_by=part).label("n"),
            p50.over(partition_by=part).label("p50"),
            p95.over(partition_by=part).label("p95"),
        ).subquery("per_row")
        stmt = sa.select(per_row).distinct()
    starts = w.starts()
    out = [
        {
            "bucket": starts[int(r.idx)],
            **_keys(group, _key(group, r.key)),
            "jobs": int(r.n),
            "p50_s": round(float(r.p50), 6),
            "p95_s": round(float(r.p95), 6),
        }
        for r in sorted(await session.execute(stmt), key=lambda r: (int(r.idx), _key(group, r.key) or ""))
    ]
    return w.answer(group=group, rows=out)


# Robots ------------------------------------------------------------------------------------------


def _counted_hours(
    start: datetime, end: datetime | None, until: datetime | None
) -> tuple[datetime, datetime] | None:
    """The whole hours of ``[start, end)`` (``end`` None: up to now) before ``until``, where a history
    the scheduler counts by the hour has its rollup rows; None if there are none."""
    if until is None:
        return None
    first, last = ceil_hour(start), until if end is None else min(floor_hour(end), until)
    return (first, last) if first < last else None


async def utilisation(session: AsyncSession, principal: Principal, w: Window) -> Answer:
    """Shaped as ``schemas.Utilisation``. Per bucket and robot: seconds connected and seconds
    Working, from the robots' hourly rollups for the whole hours the scheduler has counted, and from
    their status intervals (an open interval lasts until now) for the rest, each clipped and split
    at bucket boundaries."""
    now = utcnow()
    end = min(w.end, now)
    until = (
        await session.execute(
            sa.select(JobRollupState.robots_until).where(JobRollupState.account_id == principal.account_id)
        )
    ).scalar_one_or_none()
    robots = None
    if not principal.all_folders:
        robots = sa.select(Robot.id).where(
            Robot.account_id == principal.account_id, principal.folder_clause(Robot.folder_id)
        )
    rolled = _counted_hours(w.start, end, until)
    spans = [(w.start, end)] if rolled is None else [(w.start, rolled[0]), (rolled[1], end)]
    parts: list[Any] = [
        robot_time(
            session,
            principal.account_id,
            base=w.base,
            width=w.width,
            count=w.count,
            start=a,
            end=b,
            now=now,
            robots=robots,
        )
        for a, b in spans
        if a < b
    ]
    if rolled is not None:
        rr = RobotRollup
        where = [rr.account_id == principal.account_id, rr.hour >= rolled[0], rr.hour < rolled[1]]
        if robots is not None:
            where.append(rr.robot_id.in_(robots))
        n = bucket_of(session, w, rr.hour).label("n")
        parts.append(
            sa.select(
                n,
                rr.robot_id,
                sa.func.sum(rr.connected_s).label("connected"),
                sa.func.sum(rr.working_s).label("working"),
            )
            .where(*where)
            .group_by(n, rr.robot_id)
        )
    if not parts:
        return w.answer(rows=[])  # the range is all in the future
    u = _union(parts).subquery("u")
    stmt = sa.select(
        u.c.n,
        u.c.robot_id,
        sa.func.sum(u.c.connected).label("connected"),
        sa.func.sum(u.c.working).label("working"),
    ).group_by(u.c.n, u.c.robot_id)
    starts = w.starts()
    out = []
    for r in sorted(await session.execute(stmt), key=lambda r: (int(r.n), str(r.robot_id))):
        c, wk = float(r.connected), float(r.working)
        if c <= 0:
            continue
        out.append(
            {
                "bucket": starts[int(r.n)],
                "robot_id": str(r.robot_id),
                "connected_s": round(c, 3),
                "working_s": round(wk, 3),
                "utilisation": round(wk / c, 6),
            }
        )
    return w.answer(rows=out)


# Queues ------------------------------------------------------------------------------------------


async def queues(session: AsyncSession, principal: Principal, w: Window) -> Answer:
    """Shaped as ``schemas.QueueFigures``. Tasks added, ended and waiting per bucket and queue, from
    the tasks' history: its hourly rollups for the whole hours the scheduler has counted, the
    history itself for the rest.

    The backlog at the end of a bucket is the number waiting now, less every change to it since then:
    each history entry into Created/Postponed from elsewhere adds one, each out of them takes one."""
    until = (
        await session.execute(
            sa.select(JobRollupState.queues_until).where(JobRollupState.account_id == principal.account_id)
        )
    ).scalar_one_or_none()
    visible = sa.select(Queue.id).where(
        Queue.account_id == principal.account_id, principal.folder_clause(Queue.folder_id)
    )
    in_range = _task_figures(
        session, principal, visible, w.start, w.end, until, partial(bucket_of, session, w)
    )
    after = _task_figures(session, principal, visible, w.end, None, until, None)
    now_waiting = (
        sa.select(Task.queue_id, sa.func.count().label("n"))
        .where(Task.queue_id.in_(visible), Task.state.in_(WAITING_TASK_STATES))
        .group_by(Task.queue_id)
    )
    per_bucket: dict[uuid.UUID, dict[int, Any]] = {}
    for r in await session.execute(in_range):
        per_bucket.setdefault(r.queue_id, {})[int(r.idx)] = r
    later = {r.queue_id: int(r.delta) for r in await session.execute(after)}
    current = {r.queue_id: int(r.n) for r in await session.execute(now_waiting)}
    starts = w.starts()
    out: list[dict[str, Any]] = []
    for queue_id in sorted(set(per_bucket) | set(current), key=str):
        buckets = per_bucket.get(queue_id, {})
        backlog = current.get(queue_id, 0) - later.get(queue_id, 0)
        rows: list[dict[str, Any]] = []
        for index in reversed(range(w.count)):
            b = buckets.get(index)
            rows.append(
                {
                    "bucket": starts[index],
                    "queue_id": str(queue_id),
                    "added": int(b.added) if b else 0,
                    "ended": int(b.ended) if b else 0,
                    "successful": int(b.successful) if b else 0,
                    "backlog": backlog,
                }
            )
            backlog -= int(b.delta) if b else 0
        if any(x["added"] or x["ended"] or x["backlog"] for x in rows):
            out.extend(reversed(rows))
    return w.answer(rows=out)


def _task_figures(
    session: AsyncSession,
    principal: Principal,
    visible: Any,
    start: datetime,
    end: datetime | None,
    until: datetime | None,
    index: Callable[[Any], Any] | None,
) -> Any:
    """``task_figures`` summed per ``index`` (of a time; None: all in index 0) and queue over
    ``[start, end)`` (``end`` None: up to now): rollup rows for the whole hours before ``until``,
    history entries for the rest (each read by account and time, its index)."""
    rolled = _counted_hours(start, end, until)
    spans = [(start, end)] if rolled is None else [(start, rolled[0]), (rolled[1], end)]
    e, q = TaskEvent, QueueRollup
    parts: list[Any] = []
    for a, b in spans:
        if b is not None and a >= b:
            continue
        where = [e.account_id == principal.account_id, e.at >= a]
        if b is not None:
            where.append(e.at < b)
        if not principal.all_folders:
            # Only with a folder filter: else the planner may start from the queues and visit
            # every task of each.
            where.append(Task.queue_id.in_(visible))
        idx, by = _index(index, e.at, Task.queue_id)
        parts.append(
            sa.select(idx, Task.queue_id, *[sa.func.sum(x).label(n) for n, x in task_figures().items()])
            .join(Task, Task.id == e.task_id)
            .where(*where)
            .group_by(*by)
        )
    if rolled is not None:
        where = [q.account_id == principal.account_id, q.hour >= rolled[0], q.hour < rolled[1]]
        if not principal.all_folders:
            where.append(q.queue_id.in_(visible))
        idx, by = _index(index, q.hour, q.queue_id)
        columns = (q.added, q.ended, q.successful, q.delta)
        parts.append(
            sa.select(idx, q.queue_id, *[sa.func.sum(c).label(c.name) for c in columns])
            .where(*where)
            .group_by(*by)
        )
    u = _union(parts).subquery("u")
    names = ("added", "ended", "successful", "delta")
    return sa.select(u.c.idx, u.c.queue_id, *[_int(sa.func.sum(u.c[n])).label(n) for n in names]).group_by(
        u.c.idx, u.c.queue_id
    )


def _index(index: Callable[[Any], Any] | None, at: Any, queue: Any) -> tuple[Any, tuple[Any, ...]]:
    """The ``idx`` column and the GROUP BY of a part: a constant is selected, never grouped by
    (MariaDB takes a number there for a column's position)."""
    if index is None:
        return sa.literal(0).label("idx"), (queue,)
    idx = index(at).label("idx")
    return idx, (idx, queue)
