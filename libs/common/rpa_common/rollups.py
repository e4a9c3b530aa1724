"""Hourly job rollups: what the statistics endpoints add up for past hours instead of every job.

For each account, ``job_rollup_state`` holds ``sealed_until`` (an hour boundary) and ``cutoff`` (a
time). The invariant: for every hour before ``sealed_until``, the ``job_rollup`` rows count exactly
the account's jobs created in that hour that are in a final state and were last changed
(``updated_at``) before ``cutoff``, per process and per robot, by state, with a histogram of their
run times. The statistics read every other job of those hours themselves (not final yet, or changed
since ``cutoff``: the ``ix_job_open`` and ``ix_job_account_id_updated_at`` indexes), and every job of
later hours. Counts and success rates are therefore exact at all times, also for a job ending, late,
in an hour aggregated long ago; only run-time percentiles over wide ranges use the histograms.

A pass (``rollup_pass``, every ``RPA_STATISTICS_ROLLUP_INTERVAL_S`` on each scheduler replica), per
account, in one transaction holding the account's state row ``FOR UPDATE SKIP LOCKED`` (a second
replica skips the account instead of counting it twice):

1. the new cut-off is now less ``RPA_STATISTICS_ROLLUP_MARGIN_S``, longer than any transaction that
   changes a job runs, so every change stamped before it is committed and visible to the pass;
2. the hours to (re)compute: those of jobs changed since the previous cut-off (any change moves a job
   out of the old rows' set), and the new hours up to the hour the cut-off falls in (at most
   ``RPA_STATISTICS_ROLLUP_MAX_HOURS`` more per pass, so the first pass over a long history is cut
   into steps);
3. each of those hours is deleted and inserted again from the jobs (``INSERT ... SELECT``): a whole
   recomputation, so running it again, or after a crash, gives the same rows;
4. the state row gets the new ``sealed_until`` and ``cutoff``, in the same commit as the rows.

Day rows (kinds ``process.day`` and ``robot.day``) are each UTC day's hourly rows summed, for the
days before ``days_until`` (a midnight, never past ``sealed_until``): made in step 3's transaction
for every day whose hours it recomputed, and for new whole days (at most ``DAYS_PER_STEP`` a step). A
call bucketed by day reads them for the whole days it covers, hourly rows for the rest.

A reader reads the state row before and after its queries and runs them again if a pass committed
in between (``cutoff`` only grows), so it never mixes rows of two passes.

Queues: every hour before ``queues_until`` has its ``queue_rollup`` rows, the account's task history
of the hour counted per queue (``task_figures``). The history only grows and is stamped when
written, so the pass counts each hour once, when its end is before the cut-off, in the same
transaction (at most ``RPA_STATISTICS_ROLLUP_MAX_HOURS`` new hours a pass); a reader needs no second
look at the state row: rows of hours before the ``queues_until`` it read are never changed.

Robots: every hour before ``robots_until`` has its ``robot_rollup`` rows, the seconds of the hour each
robot was connected and Working (``robot_time``). Status intervals are opened and closed with the
time of the change, in its transaction, so once an hour has ended before the cut-off nothing changes
its seconds any more: an interval still open then lasts past the hour's end whenever it closes. The
pass counts each such hour once, as for queues.

Run-time histograms: bin 0 holds runs under 1 s, bin k (1-62) runs in [2^((k-1)/4), 2^(k/4)) s,
bin 63 runs of 2^15.5 s (12.9 h) and more; each row also keeps its shortest and longest run.
"""

from __future__ import annotations

import math
import uuid
from bisect import bisect_right
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import accumulate
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.db.engine import dialect_of
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import (
    Account,
    Job,
    JobRollup,
    JobRollupState,
    QueueRollup,
    RobotRollup,
    RobotStatusInterval,
    Task,
    TaskEvent,
)
from rpa_common.models.base import UTCDateTime, utcnow
from rpa_common.models.enums import FINAL_JOB_STATES, FINAL_TASK_STATES, RobotStatus, TaskEventKind, TaskState
from rpa_common.models.stats import HIST_BINS, hist_columns
from rpa_common.service import ServiceContext

log = structlog.get_logger(__name__)

NO_ROBOT = uuid.UUID(int=0)
"""``key_id`` of robot rows for jobs that never had a robot (e.g. stopped while Pending)."""
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
KINDS = ("process", "robot")
DAY_KINDS = {kind: f"{kind}.day" for kind in KINDS}
"""The day rows' kind of each hourly kind: the sums of a UTC day's hourly rows."""
DAYS_PER_STEP = 31
"""New days a pass sums per account and transaction (from hourly rows: cheap)."""
FINAL = sorted(s.value for s in FINAL_JOB_STATES)
STEPS_PER_DOUBLING = 4
BIN_RATIO = 2 ** (1 / STEPS_PER_DOUBLING)
"""Width of a histogram bin: its upper edge over its lower edge (about 1.19)."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def floor_hour(value: datetime) -> datetime:
    value = value.astimezone(UTC)
    return value.replace(minute=0, second=0, microsecond=0)


def ceil_hour(value: datetime) -> datetime:
    down = floor_hour(value)
    return down if down == value else down + HOUR


def floor_day(value: datetime) -> datetime:
    return floor_hour(value).replace(hour=0)


def ceil_day(value: datetime) -> datetime:
    down = floor_day(value)
    return down if down == value else down + DAY


# SQL pieces, per dialect ---------------------------------------------------------------------------


def seconds_between(session: AsyncSession, start: Any, end: Any) -> Any:
    """``end - start`` in seconds (a float), on either database."""
    if dialect_of(session) == "postgresql":
        # date_part gives a float; extract gives numeric (PostgreSQL 14+), several times slower to add up.
        return sa.func.date_part("epoch", end - start)
    return sa.func.timestampdiff(sa.literal_column("MICROSECOND"), start, end) / sa.literal_column("1e6")


def hour_of(session: AsyncSession, column: Any) -> Any:
    """The UTC hour ``column`` falls in, as a timestamp of the column's type."""
    return _floor_to(session, column, "HOUR", 3600)


def day_of(session: AsyncSession, column: Any) -> Any:
    """The UTC day ``column`` falls in (its midnight), as a timestamp of the column's type."""
    return _floor_to(session, column, "DAY", 86400)


def _floor_to(session: AsyncSession, column: Any, unit: str, seconds: int) -> Any:
    if dialect_of(session) == "postgresql":
        return sa.func.to_timestamp(sa.func.floor(sa.func.date_part("epoch", column) / seconds) * seconds)
    # DATETIME holds UTC; whole units since a base before any storable time, added back.
    base: Any = sa.literal_column("'1900-01-01 00:00:00'")
    return sa.func.timestampadd(
        sa.literal_column(unit), sa.func.timestampdiff(sa.literal_column(unit), base, column), base
    )


def hist_bin(d: Any) -> Any:
    """The histogram bin of a run time ``d`` in seconds (see the module's docstring)."""
    k = sa.func.floor(sa.func.ln(d) * (STEPS_PER_DOUBLING / math.log(2))) + 1
    return sa.case((d < 1, 0), else_=sa.func.least(k, HIST_BINS - 1))


def bin_edges(k: int) -> tuple[float, float]:
    """Lower and upper edge of bin ``k`` in seconds (the last one's upper edge is infinite)."""
    if k == 0:
        return 0.0, 1.0
    upper = math.inf if k == HIST_BINS - 1 else BIN_RATIO**k
    return BIN_RATIO ** (k - 1), upper


_EDGES = [bin_edges(k) for k in range(HIST_BINS)]


def hist_percentile(
    counts: list[int], p: float, d_min: float, d_max: float, cumulative: list[int] | None = None
) -> float:
    """PERCENTILE_CONT ``p`` estimated from bin counts: the values of a bin are taken as spread evenly
    (geometrically; linearly in bin 0) over it, between ``d_min`` and ``d_max``, and the two values
    around the position ``p * (n - 1)`` interpolated as PERCENTILE_CONT does. The estimate lies in
    the bins of the true values, so it is off by less than one bin: under 19 % for runs of 1 s to
    12.9 h, under 1 s below that, and at most up to ``d_max`` above. ``cumulative``: the running
    sums of ``counts``, when the caller has them (several percentiles of one histogram)."""
    cum = cumulative if cumulative is not None else list(accumulate(counts))
    n = cum[-1]
    pos = p * (n - 1)
    lo_rank, hi_rank = math.floor(pos), math.ceil(pos)

    def value(rank: int) -> float:
        k = bisect_right(cum, rank)  # the bin holding the value of this rank
        if k >= len(cum):
            return d_max
        c = counts[k]
        lo, hi = _EDGES[k]
        lo, hi = max(lo, d_min), min(hi, d_max)
        frac = (rank - (cum[k] - c) + 0.5) / c
        # Linear in bin 0 (its lower edge is 0), geometric in the log-spaced bins.
        v = lo + (hi - lo) * frac if k == 0 or lo <= 0 else lo * (hi / lo) ** frac
        return min(max(v, d_min), d_max)

    a = value(lo_rank)
    return a if hi_rank == lo_rank else a + (value(hi_rank) - a) * (pos - lo_rank)


WAITING_TASK_STATES = (TaskState.CREATED.value, TaskState.POSTPONED.value)


def task_figures() -> dict[str, Any]:
    """Per task history entry, what the queue statistics add up: ``added`` (a task created),
    ``ended`` (moved to a final state), ``successful`` (of those, to Successful) and ``delta`` (the
    number waiting, Created or Postponed: +1 into them from elsewhere, -1 out of them)."""
    e = TaskEvent
    waiting = list(WAITING_TASK_STATES)
    into = sa.and_(e.to_state.in_(waiting), sa.or_(e.from_state.is_(None), e.from_state.not_in(waiting)))
    out_of = sa.and_(e.from_state.in_(waiting), e.to_state.is_not(None), e.to_state.not_in(waiting))
    ended = sa.and_(e.kind == TaskEventKind.STATE, e.to_state.in_([s.value for s in FINAL_TASK_STATES]))
    successful = sa.and_(e.kind == TaskEventKind.STATE, e.to_state == TaskState.SUCCESSFUL)
    return {
        "added": sa.case((e.kind == TaskEventKind.CREATED, 1), else_=0),
        "ended": sa.case((ended, 1), else_=0),
        "successful": sa.case((successful, 1), else_=0),
        "delta": sa.case((into, 1), (out_of, -1), else_=0),
    }


def _at(value: datetime) -> Any:
    return sa.literal(value, UTCDateTime())


def _expand(session: AsyncSession, count: int, first: Any, last: Any) -> tuple[Any, Any]:
    """A FROM item giving one row per bucket index from ``first`` to ``last`` (both below ``count``)
    of each row it is joined to, and its index column: ``generate_series`` on PostgreSQL, the
    Sequence engine's ``seq_0_to_N`` table on MariaDB (read by its key, one range per row)."""
    if dialect_of(session) == "postgresql":
        series = (
            sa.func.generate_series(first, last).table_valued("n").render_derived(name="bucket_n").lateral()
        )
        return series, series.c.n
    seq = sa.table(f"seq_0_to_{count - 1}", sa.column("seq")).alias("bucket_n")
    return seq, seq.c.seq


def robot_time(
    session: AsyncSession,
    account_id: uuid.UUID,
    *,
    base: datetime,
    width: int,
    count: int,
    start: datetime,
    end: datetime,
    now: datetime,
    robots: Any = None,
) -> Any:
    """A select of ``n``, ``robot_id``, ``connected`` and ``working``: per bucket (``width`` seconds
    from ``base``, ``count`` of them) and robot, the seconds connected and Working in ``[start,
    end)``, from the account's status intervals (an open one lasts until ``now``), each clipped to
    that span and split at bucket boundaries. ``robots``: a select of the robot ids to count."""
    i = RobotStatusInterval
    where: list[Any] = [i.account_id == account_id, i.started_at < end]
    if robots is not None:
        where.append(i.robot_id.in_(robots))
    start_s, end_s = (start - base).total_seconds(), (end - base).total_seconds()
    s = sa.func.greatest(seconds_between(session, _at(base), i.started_at), start_s)
    e = sa.func.least(seconds_between(session, _at(base), sa.func.coalesce(i.ended_at, _at(now))), end_s)
    # Closed intervals ending in the span and open ones apart: each part reads its own stretch of the
    # (account, ended_at) index, where an OR of the two would read every interval of the account.
    columns = (i.robot_id, i.status, s.label("s"), e.label("e"))
    clipped = sa.union_all(
        sa.select(*columns).where(*where, i.ended_at > start),
        sa.select(*columns).where(*where, i.ended_at.is_(None)),
    ).subquery("clipped")
    iv = (
        sa.select(
            clipped,
            sa.cast(sa.func.floor(clipped.c.s / width), sa.Integer).label("fb"),
            (sa.cast(sa.func.ceil(clipped.c.e / width), sa.Integer) - 1).label("lb"),
        )
        .where(clipped.c.e > clipped.c.s)
        .subquery("iv")
    )
    buckets, n = _expand(session, count, iv.c.fb, iv.c.lb)
    overlap = sa.func.least(iv.c.e, (n + 1) * width) - sa.func.greatest(iv.c.s, n * width)
    working = sa.case((iv.c.status == RobotStatus.WORKING.value, overlap), else_=0)
    return (
        sa.select(
            n.label("n"),
            iv.c.robot_id,
            sa.func.sum(overlap).label("connected"),
            sa.func.sum(working).label("working"),
        )
        .select_from(iv)
        .join(buckets, sa.and_(n >= iv.c.fb, n <= iv.c.lb))
        .group_by(n, iv.c.robot_id)
    )


# The pass ---------------------------------------------------------------------------------------


@dataclass
class RollupResult:
    accounts: int = 0
    hours: int = 0
    skipped: int = 0
    """Accounts another replica was aggregating at the same time."""


def _insert_ignore(session: AsyncSession, table: Any) -> Any:
    if dialect_of(session) == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return mysql.insert(table).prefix_with("IGNORE")


def _runs(starts: list[datetime], width: timedelta = HOUR) -> list[tuple[datetime, datetime]]:
    """Sorted hours (or days) as ``[start, end)`` runs of consecutive ones."""
    out: list[tuple[datetime, datetime]] = []
    for h in sorted(set(starts)):
        if out and out[-1][1] == h:
            out[-1] = (out[-1][0], h + width)
        else:
            out.append((h, h + width))
    return out


async def _recompute(
    session: AsyncSession, account_id: uuid.UUID, start: datetime, end: datetime, cutoff: datetime
) -> None:
    """The rows of the hours in ``[start, end)``, deleted and made again from the jobs."""
    await session.execute(
        sa.delete(JobRollup).where(
            JobRollup.account_id == account_id,
            JobRollup.kind.in_(KINDS),  # the key's second column: the delete reads only these hours
            JobRollup.hour >= start,
            JobRollup.hour < end,
        )
    )
    d = seconds_between(session, Job.started_at, Job.ended_at)
    timed = sa.and_(Job.started_at.is_not(None), Job.ended_at.is_not(None))
    src = (
        sa.select(
            hour_of(session, Job.created_at).label("hour"),
            Job.process_id.label("process_id"),
            sa.func.coalesce(Job.robot_id, sa.literal(NO_ROBOT, sa.Uuid())).label("robot_id"),
            Job.state.label("state"),
            sa.case((timed, d)).label("d"),
            sa.case((timed, hist_bin(d))).label("bin"),
        )
        .where(
            Job.account_id == account_id,
            Job.created_at >= start,
            Job.created_at < end,
            Job.state.in_(FINAL),
            Job.updated_at < cutoff,
        )
        .subquery("src")
    )
    table: sa.Table = JobRollup.__table__
    for kind, key in (("process", src.c.process_id), ("robot", src.c.robot_id)):
        sums = [sa.func.sum(sa.case((src.c.bin == k, 1), else_=0)) for k in range(HIST_BINS)]
        select = sa.select(
            sa.literal(account_id, sa.Uuid()),
            sa.cast(src.c.hour, UTCDateTime()) if dialect_of(session) == "postgresql" else src.c.hour,
            sa.literal(kind, sa.String(16)),
            key,
            src.c.state,
            sa.func.count(),
            sa.func.count(src.c.d),
            sa.func.min(src.c.d),
            sa.func.max(src.c.d),
            *sums,
        ).group_by(src.c.hour, key, src.c.state)
        names = ["account_id", "hour", "kind", "key_id", "state", "jobs", "timed", "d_min", "d_max"]
        names += [c.name for c in hist_columns()]
        await session.execute(sa.insert(table).from_select(names, select))


async def _recompute_days(
    session: AsyncSession, account_id: uuid.UUID, start: datetime, end: datetime
) -> None:
    """The day rows of the days in ``[start, end)``, deleted and summed again from their hourly rows
    (which this pass has made already: both change in the same transaction)."""
    await session.execute(
        sa.delete(JobRollup).where(
            JobRollup.account_id == account_id,
            JobRollup.kind.in_(list(DAY_KINDS.values())),
            JobRollup.hour >= start,
            JobRollup.hour < end,
        )
    )
    day = day_of(session, JobRollup.hour)
    day = sa.cast(day, UTCDateTime()) if dialect_of(session) == "postgresql" else day
    table: sa.Table = JobRollup.__table__
    names = ["account_id", "hour", "kind", "key_id", "state", "jobs", "timed", "d_min", "d_max"]
    names += [c.name for c in hist_columns()]
    for kind, day_kind in DAY_KINDS.items():
        select = (
            sa.select(
                sa.literal(account_id, sa.Uuid()),
                day,
                sa.literal(day_kind, sa.String(16)),
                JobRollup.key_id,
                JobRollup.state,
                sa.func.sum(JobRollup.jobs),
                sa.func.sum(JobRollup.timed),
                sa.func.min(JobRollup.d_min),
                sa.func.max(JobRollup.d_max),
                *[sa.func.sum(c) for c in hist_columns()],
            )
            .where(
                JobRollup.account_id == account_id,
                JobRollup.kind == kind,
                JobRollup.hour >= start,
                JobRollup.hour < end,
            )
            .group_by(day, JobRollup.key_id, JobRollup.state)
        )
        await session.execute(sa.insert(table).from_select(names, select))


async def _count_queues(session: AsyncSession, account_id: uuid.UUID, start: datetime, end: datetime) -> None:
    """The ``queue_rollup`` rows of the hours in ``[start, end)``, made from the task history (deleted
    first: a pass that counts them again, after a crash or a restore, gives the same rows)."""
    await session.execute(
        sa.delete(QueueRollup).where(
            QueueRollup.account_id == account_id, QueueRollup.hour >= start, QueueRollup.hour < end
        )
    )
    hour = hour_of(session, TaskEvent.at)
    hour = sa.cast(hour, UTCDateTime()) if dialect_of(session) == "postgresql" else hour
    figures = task_figures()
    select = (
        sa.select(
            sa.literal(account_id, sa.Uuid()),
            hour,
            Task.queue_id,
            *[sa.func.sum(expr) for expr in figures.values()],
        )
        .join(Task, Task.id == TaskEvent.task_id)
        .where(TaskEvent.account_id == account_id, TaskEvent.at >= start, TaskEvent.at < end)
        .group_by(hour, Task.queue_id)
    )
    names = ["account_id", "hour", "queue_id", *figures]
    await session.execute(sa.insert(QueueRollup).from_select(names, select))


async def _count_robots(
    session: AsyncSession, account_id: uuid.UUID, start: datetime, end: datetime, *, now: datetime
) -> None:
    """The ``robot_rollup`` rows of the hours in ``[start, end)`` (deleted first, as for queues)."""
    await session.execute(
        sa.delete(RobotRollup).where(
            RobotRollup.account_id == account_id, RobotRollup.hour >= start, RobotRollup.hour < end
        )
    )
    hours = int((end - start).total_seconds()) // 3600
    spent = robot_time(
        session, account_id, base=start, width=3600, count=hours, start=start, end=end, now=now
    ).subquery("spent")
    hour: Any
    if dialect_of(session) == "postgresql":
        hour = sa.cast(_at(start) + sa.literal_column("interval '1 hour'") * spent.c.n, UTCDateTime())
    else:
        hour = sa.func.timestampadd(sa.literal_column("HOUR"), spent.c.n, _at(start))
    select = sa.select(
        sa.literal(account_id, sa.Uuid()), hour, spent.c.robot_id, spent.c.connected, spent.c.working
    ).where(spent.c.connected > 0)
    names = ["account_id", "hour", "robot_id", "connected_s", "working_s"]
    await session.execute(sa.insert(RobotRollup).from_select(names, select))


async def _roll_forward(
    session: AsyncSession,
    until: datetime | None,
    first: Any,
    count: Callable[[datetime, datetime], Awaitable[None]],
    cutoff: datetime,
    max_hours: int,
) -> tuple[datetime | None, bool]:
    """Count the new whole hours of a history that only grows (``count(start, end)``), from
    ``until`` (None: from the hour of its first entry, which the select ``first`` reads) up to the
    hour ``cutoff`` falls in, at most ``max_hours`` of them: the new ``until`` and whether it caught
    up."""
    if until is None:
        at = (await session.execute(first)).scalar_one_or_none()
        if at is None:
            return None, True  # no history yet
        until = floor_hour(_aware(at))
    new_until = max(until, min(floor_hour(cutoff), until + timedelta(hours=max_hours)))
    if new_until > until:
        await count(until, new_until)
    return new_until, new_until >= floor_hour(cutoff)


async def rollup_account(
    session: AsyncSession, account_id: uuid.UUID, *, now: datetime, margin_s: float, max_hours: int
) -> tuple[int, bool] | None:
    """One pass over one account (see the module's docstring): the hours recomputed and whether it
    has caught up with the cut-off, or None when another replica holds the account."""
    state = (
        await session.execute(
            sa.select(JobRollupState)
            .where(JobRollupState.account_id == account_id)
            .with_for_update(skip_locked=True)
        )
    ).scalar_one_or_none()
    if state is None:
        return None
    cutoff = now - timedelta(seconds=margin_s)
    if state.cutoff is not None and state.cutoff > cutoff:
        cutoff = state.cutoff  # a replica whose clock is behind never moves the cut-off back
    state.queues_until, queues_done = await _roll_forward(
        session,
        state.queues_until,
        sa.select(sa.func.min(TaskEvent.at)).where(TaskEvent.account_id == account_id),
        partial(_count_queues, session, account_id),
        cutoff,
        max_hours,
    )
    state.robots_until, robots_done = await _roll_forward(
        session,
        state.robots_until,
        sa.select(sa.func.min(RobotStatusInterval.started_at)).where(
            RobotStatusInterval.account_id == account_id
        ),
        partial(_count_robots, session, account_id, now=now),
        cutoff,
        max_hours,
    )
    others_done = queues_done and robots_done
    sealed = state.sealed_until
    first: datetime | None = None
    if sealed is None or state.days_until is None:
        first = (
            await session.execute(sa.select(sa.func.min(Job.created_at)).where(Job.account_id == account_id))
        ).scalar_one_or_none()
        if first is None:
            await session.flush()
            return 0, others_done  # no jobs yet: nothing to seal
        first = _aware(first)
    if sealed is None:
        assert first is not None
        sealed = floor_hour(first)
    new_sealed = max(sealed, min(floor_hour(cutoff), sealed + timedelta(hours=max_hours)))
    hours: list[datetime] = []
    if state.cutoff is not None:
        # Every job changed since the last cut-off left the old rows' set (or joins it now).
        touched = (
            sa.select(hour_of(session, Job.created_at).label("h"))
            .where(
                Job.account_id == account_id,
                Job.updated_at >= state.cutoff,
                Job.created_at < sealed,
            )
            .distinct()
        )
        hours += [
            h if isinstance(h, datetime) and h.tzinfo else _aware(h) for h in (await session.scalars(touched))
        ]
    step = sealed
    while step < new_sealed:
        hours.append(step)
        step += HOUR
    for start, end in _runs(hours):
        await _recompute(session, account_id, start, end, cutoff)
    # Days: those with day rows whose hours changed, then whole new days up to the new seal.
    days_until = state.days_until
    if days_until is None:
        assert first is not None
        days_until = floor_day(first)
    days = [floor_day(h) for h in hours if floor_day(h) < days_until]
    new_days_until = max(days_until, min(floor_day(new_sealed), days_until + DAYS_PER_STEP * DAY))
    step = days_until
    while step < new_days_until:
        days.append(step)
        step += DAY
    for start, end in _runs(days, DAY):
        await _recompute_days(session, account_id, start, end)
    state.sealed_until = new_sealed
    state.cutoff = cutoff
    state.days_until = new_days_until
    state.passed_at = now
    await session.flush()
    caught_up = new_sealed >= floor_hour(cutoff) and new_days_until >= floor_day(new_sealed)
    return len(set(hours)), caught_up and others_done


def _aware(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def rollup_pass(ctx: ServiceContext, *, now: datetime | None = None) -> RollupResult:
    """Aggregate every account's jobs up to the cut-off (see the module's docstring)."""
    moment = now or utcnow()
    settings = ctx.settings
    result = RollupResult()

    async def ensure(session: AsyncSession) -> list[uuid.UUID]:
        ids = list((await session.scalars(sa.select(Account.id))).all())
        have = set((await session.scalars(sa.select(JobRollupState.account_id))).all())
        missing = [{"account_id": a} for a in ids if a not in have]
        if missing:
            await session.execute(_insert_ignore(session, JobRollupState.__table__), missing)
        return ids

    accounts = await run_in_transaction(ctx.sessions, ensure, attempts=settings.db_retry_attempts)
    for account_id in accounts:
        while True:

            async def work(
                session: AsyncSession, account_id: uuid.UUID = account_id
            ) -> tuple[int, bool] | None:
                return await rollup_account(
                    session,
                    account_id,
                    now=moment,
                    margin_s=settings.statistics_rollup_margin_s,
                    max_hours=settings.statistics_rollup_max_hours,
                )

            done = await run_in_transaction(ctx.sessions, work, attempts=settings.db_retry_attempts)
            if done is None:
                result.skipped += 1
                break
            result.hours += done[0]
            if done[1]:
                break  # caught up (a long history takes several steps, one transaction each)
        result.accounts += 1
    if result.hours:
        log.info("statistics.rollup", accounts=result.accounts, hours=result.hours, skipped=result.skipped)
    return result


__all__ = [
    "BIN_RATIO",
    "DAY_KINDS",
    "NO_ROBOT",
    "WAITING_TASK_STATES",
    "RollupResult",
    "bin_edges",
    "ceil_day",
    "ceil_hour",
    "day_of",
    "floor_day",
    "floor_hour",
    "hist_bin",
    "hist_percentile",
    "hour_of",
    "robot_time",
    "rollup_account",
    "rollup_pass",
    "seconds_between",
    "task_figures",
]
