"""Firing a trigger, shared by the API (test fire, webhooks, robot commands) and the scheduler.

An occurrence of a trigger is identified by ``(trigger_id, fire_key)``: the scheduled time in UTC
for schedules, a request or event id for the other kinds. ``fire_many`` writes the occurrences'
``trigger_fire`` rows with one multi-row insert-or-ignore, each batch under its own claim token,
reads back which rows hold its token, and creates the jobs of those only, in the caller's
transaction. Any number of scheduler replicas may fire the same occurrence: exactly one creates
its job, the others change nothing (see docs/design/triggers.md).

For the API: ``fire`` in the request's transaction, then publish each outcome's ``message``
(``JOB_CREATED``) and, after any create/update/delete of a trigger, ``TriggerChanged`` on
``TRIGGER_CHANGED`` after the commit. When a schedule's cron, time zone, interval, once-at or
calendar changes, set its ``next_fire_at`` to ``next_fire_times(trigger, now, 1, ...)`` (or None):
it is the replicas' shared cursor, and a stale one would count the new schedule's past
occurrences as missed if no replica was running to see the change.

Also here: the schedule kinds' fire times (``next_fire_times``, through APScheduler's triggers, so
cron in a time zone is DST-correct), their validation (``validate_schedule``) and calendars.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from rpa_common import metrics
from rpa_common.db.engine import dialect_of
from rpa_common.errors import Unprocessable
from rpa_common.events import record as record_event
from rpa_common.models import Job, JobEvent, Process, Trigger, TriggerFire
from rpa_common.models.base import utcnow
from rpa_common.models.enums import ActorType, JobSource, JobState, MisfirePolicy, TriggerKind
from rpa_common.models.triggers import Calendar, CalendarDay
from rpa_common.nats.messages import JobCreated

CREATED = "created"
ALREADY_FIRED = "occurrence already fired"
DISABLED = "trigger disabled"
NO_VERSION = "process has no current version"
NO_TARGET = "no target robot or robot group"
MISSED = "missed"

MAX_GRACE_S = 7 * 24 * 3600
"""The longest misfire grace time a trigger may have."""

_SOURCES = {TriggerKind.JOB_COMPLETED: JobSource.CHAIN, TriggerKind.ROBOT: JobSource.ROBOT}


@dataclass(frozen=True)
class FireOutcome:
    """What one occurrence did: the job it created, or why it created none."""

    job_id: uuid.UUID | None
    created: bool
    reason: str | None
    message: JobCreated | None = None
    """``JOB_CREATED`` of the new job, for the caller to publish after its commit."""


@dataclass(frozen=True)
class Occurrence:
    """One occurrence to fire. ``reason`` records it without a job (a missed occurrence)."""

    trigger: Trigger
    fire_key: str
    scheduled_at: datetime | None = None
    input_args: dict[str, Any] | None = None
    parent_job_id: uuid.UUID | None = None
    reason: str | None = None
    next_fire_at: datetime | None = field(default=None, compare=False)
    sets_next: bool = field(default=False, compare=False)
    """For schedules: the fire also stores ``next_fire_at`` (None: no occurrence left) as the
    trigger's next occurrence, the replicas' shared cursor."""


def fire_key_of(scheduled_at: datetime) -> str:
    """A scheduled occurrence's key: its time in UTC, ISO 8601 (the same on every replica)."""
    return scheduled_at.astimezone(UTC).isoformat()


def _insert_ignore(session: AsyncSession, table: sa.Table) -> Any:
    if dialect_of(session) == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return mysql.insert(table).prefix_with("IGNORE")


async def fire(
    session: AsyncSession,
    trigger: Trigger,
    *,
    fire_key: str,
    scheduled_at: datetime | None,
    input_args: dict[str, Any] | None = None,
    parent_job_id: uuid.UUID | None = None,
    allow_disabled: bool = False,
) -> FireOutcome:
    """Fire one occurrence of ``trigger`` in the caller's transaction (the caller commits).

    ``input_args`` are merged over the trigger's own. A disabled trigger creates no job unless
    ``allow_disabled`` (a person's "test" fire). The trigger's ``last_*`` columns are updated.
    """
    occurrence = Occurrence(
        trigger,
        fire_key,
        scheduled_at,
        input_args,
        parent_job_id,
        reason=DISABLED if not (trigger.enabled or allow_disabled) else None,
    )
    [outcome] = await fire_many(session, [occurrence])
    return outcome


async def fire_many(session: AsyncSession, occurrences: Sequence[Occurrence]) -> list[FireOutcome]:
    """Fire occurrences (of any triggers) in the caller's transaction; outcomes in the same order.

    Statements: one select of the processes' versions, a multi-row insert-or-ignore of the fire
    rows, a select of those this call won, multi-row inserts of the jobs and their history, an
    executemany update of the triggers. Rows are written in key order so two replicas firing the same batch wait on
    each other instead of deadlocking.
    """
    if not occurrences:
        return []
    now = utcnow()
    claim = str(uuid.uuid4())
    process_ids = {o.trigger.process_id for o in occurrences}
    versions: dict[uuid.UUID, uuid.UUID | None] = dict(
        (
            await session.execute(
                sa.select(Process.id, Process.current_version_id).where(Process.id.in_(process_ids))
            )
        ).all()
    )
    planned: list[tuple[Occurrence, str, uuid.UUID | None]] = []
    for o in occurrences:
        t = o.trigger
        reason = o.reason
        if reason is None and versions.get(t.process_id) is None:
            reason = NO_VERSION
        if reason is None and t.robot_id is None and t.robot_group_id is None:
            reason = NO_TARGET
        planned.append((o, reason or CREATED, None if reason else uuid.uuid4()))
    rows = sorted(
        (
            {
                "trigger_id": o.trigger.id,
                "fire_key": o.fire_key,
                "job_id": job_id,
                "fired_at": now,
                "scheduled_at": o.scheduled_at,
                "result": result[:300],
                "claim": claim,
            }
            for o, result, job_id in planned
        ),
        key=lambda r: (str(r["trigger_id"]), r["fire_key"]),
    )
    table = cast(sa.Table, TriggerFire.__table__)
    # executemany: SQLAlchemy sends it as multi-row INSERTs with one cached compile.
    await session.execute(_insert_ignore(session, table), rows)
    won: set[tuple[uuid.UUID, str]] = set()
    for start in range(0, len(rows), 500):
        chunk = rows[start : start + 500]
        won.update(
            (
                await session.execute(
                    sa.select(TriggerFire.trigger_id, TriggerFire.fire_key).where(
                        TriggerFire.trigger_id.in_({r["trigger_id"] for r in chunk}),
                        TriggerFire.fire_key.in_({r["fire_key"] for r in chunk}),
                        TriggerFire.claim == claim,
                    )
                )
            ).all()
        )
    outcomes: list[FireOutcome] = []
    jobs: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    kinds: dict[str, int] = {}
    last: dict[uuid.UUID, tuple[Occurrence, uuid.UUID | None, str]] = {}
    for o, result, job_id in planned:
        t = o.trigger
        if (t.id, o.fire_key) not in won:
            outcomes.append(FireOutcome(None, False, ALREADY_FIRED))
            continue
        _fired_event(session, t, o, job_id, result, now)
        if job_id is None:
            outcomes.append(FireOutcome(None, False, result))
            last[t.id] = (o, None, result)
            continue
        # The rows ``jobflow.create_job`` makes (a Pending job and its first history entry), as
        # plain rows: one executemany each instead of an ORM flush of thousands of objects.
        robot_group_id = None if t.robot_id is not None else t.robot_group_id
        jobs.append(
            {
                "id": job_id,
                "account_id": t.account_id,
                "process_id": t.process_id,
                "process_version_id": versions[t.process_id],
                "robot_id": t.robot_id,
                "robot_group_id": robot_group_id,
                "trigger_id": t.id,
                "parent_job_id": o.parent_job_id,
                "state": JobState.PENDING,
                "priority": t.priority,
                "source": _SOURCES.get(t.kind, JobSource.TRIGGER),
                "input_args": {**(t.input_args or {}), **(o.input_args or {})},
                "max_retries": 0,
                "attempt": 0,
                "offers": 0,
                "created_at": now,
                "updated_at": now,
            }
        )
        events.append(
            {
                "id": uuid.uuid4(),
                "account_id": t.account_id,
                "job_id": job_id,
                "from_state": None,
                "to_state": JobState.PENDING,
                "attempt": 0,
                "at": now,
                "actor_type": ActorType.TRIGGER,
                "actor_id": t.id,
                "reason": f"{t.kind} trigger {o.fire_key}"[:1000],
            }
        )
        kinds[str(t.kind)] = kinds.get(str(t.kind), 0) + 1
        message = JobCreated(
            account_id=t.account_id,
            job_id=job_id,
            robot_id=t.robot_id,
            robot_group_id=robot_group_id,
            created_at=now,
        )
        record_event(
            session,
            "job.created",
            account_id=t.account_id,
            object_id=job_id,
            at=now,
            data={
                "job_id": str(job_id),
                "process_id": str(t.process_id),
                "robot_id": t.robot_id and str(t.robot_id),
                "robot_group_id": robot_group_id and str(robot_group_id),
                "state": JobState.PENDING.value,
                "source": str(_SOURCES.get(t.kind, JobSource.TRIGGER)),
            },
        )
        outcomes.append(FireOutcome(job_id, True, None, message))
        last[t.id] = (o, job_id, CREATED)
    if jobs:
        await session.execute(sa.insert(cast(sa.Table, Job.__table__)), jobs)
        await session.execute(sa.insert(cast(sa.Table, JobEvent.__table__)), events)
    await _record_last(session, last, now)
    for kind, count in kinds.items():
        metrics.TRIGGER_FIRES.labels(kind).inc(count)
    return outcomes


def _fired_event(
    session: AsyncSession, t: Trigger, o: Occurrence, job_id: uuid.UUID | None, result: str, now: datetime
) -> None:
    record_event(
        session,
        "trigger.fired",
        account_id=t.account_id,
        object_id=t.id,
        folder_id=t.folder_id,
        at=now,
        data={
            "trigger_id": str(t.id),
            "fire_key": o.fire_key,
            "job_id": job_id and str(job_id),
            "result": result[:300],
        },
    )


_T = cast(sa.Table, Trigger.__table__)
_LAST = {
    "last_fired_at": sa.bindparam("b_at", type_=_T.c.last_fired_at.type),
    "last_job_id": sa.bindparam("b_job", type_=_T.c.last_job_id.type),
    "last_result": sa.bindparam("b_result", type_=_T.c.last_result.type),
    # A fire is not a change of the trigger: updated_at stays (replicas reload what changed).
    "updated_at": _T.c.updated_at,
}
_SET_LAST = sa.update(_T).where(_T.c.id == sa.bindparam("b_id", type_=_T.c.id.type)).values(**_LAST)
_SET_LAST_AND_NEXT = _SET_LAST.values(next_fire_at=sa.bindparam("b_next", type_=_T.c.next_fire_at.type))


async def _record_last(
    session: AsyncSession, last: dict[uuid.UUID, tuple[Occurrence, uuid.UUID | None, str]], now: datetime
) -> None:
    """The triggers' last fire, job and result (and next fire for schedules), in id order."""
    plain: list[dict[str, Any]] = []
    with_next: list[dict[str, Any]] = []
    for tid, (o, jid, res) in sorted(last.items(), key=lambda kv: str(kv[0])):
        row = {"b_id": tid, "b_at": now, "b_job": jid, "b_result": res[:300]}
        if o.sets_next:
            with_next.append({**row, "b_next": o.next_fire_at})
        else:
            plain.append(row)
        t = o.trigger
        if sa.inspect(t, raiseerr=False) is not None and t in session:
            set_committed_value(t, "last_fired_at", now)
            set_committed_value(t, "last_job_id", jid)
            set_committed_value(t, "last_result", res)
            if o.sets_next:
                set_committed_value(t, "next_fire_at", o.next_fire_at)
    if plain:
        await session.execute(_SET_LAST, plain)
    if with_next:
        await session.execute(_SET_LAST_AND_NEXT, with_next)


_SET_NEXT = (
    sa.update(_T)
    .where(_T.c.id == sa.bindparam("b_id", type_=_T.c.id.type))
    .values(next_fire_at=sa.bindparam("b_next", type_=_T.c.next_fire_at.type), updated_at=_T.c.updated_at)
)


async def set_next_fire_at(session: AsyncSession, next_at: dict[uuid.UUID, datetime | None]) -> None:
    """Store schedules' next occurrences (the shared cursor) without firing, in id order."""
    rows = [{"b_id": tid, "b_next": t} for tid, t in sorted(next_at.items(), key=lambda kv: str(kv[0]))]
    if rows:
        await session.execute(_SET_NEXT, rows)


# Schedules -----------------------------------------------------------------------------------------

_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _standard_day_of_week(field_: str) -> str:
    """Standard cron weekdays (0 or 7 = Sunday, 1 = Monday) as names.

    APScheduler 3 numbers weekdays from Monday = 0, so ``1-5`` would mean Tuesday to Saturday;
    names mean the same to both. Numeric items (``1-5``, ``*/2``, ``0,6``, ``1/2``) are expanded.
    """
    if field_ in ("*", "?"):
        return "*"
    names: list[str] = []
    for item in field_.split(","):
        base, _, step_s = item.partition("/")
        if any(c.isalpha() for c in base):
            names.append(item.lower())
            continue
        step = int(step_s) if step_s else 1
        if base == "*":
            lo, hi = 0, 6
        elif "-" in base:
            a, b = base.split("-", 1)
            lo, hi = int(a), int(b)
        else:
            lo = int(base)
            hi = 7 if step_s else lo
        if not (0 <= lo <= 7 and 0 <= hi <= 7 and lo <= hi and step > 0):
            raise ValueError(f"invalid day of week {item!r}")
        names.extend(_CRON_DAYS[d % 7] for d in range(lo, hi + 1, step))
    return ",".join(dict.fromkeys(names))


def zone(time_zone: str | None) -> ZoneInfo:
    """The IANA time zone (ValueError if unknown)."""
    try:
        return ZoneInfo(time_zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"unknown time zone {time_zone!r}") from exc


@functools.lru_cache(maxsize=16384)
def cron_trigger(cron: str, time_zone: str | None) -> CronTrigger:
    """The APScheduler trigger of a standard five-field cron in an IANA time zone (ValueError if invalid).

    Seconds may be given as a sixth, first field (``*/5 * * * * *``: every 5 seconds).
    """
    tz = zone(time_zone)
    fields = cron.split()
    if len(fields) == 6:
        second, minute, hour, day, month, dow = fields
    elif len(fields) == 5:
        second = "0"
        minute, hour, day, month, dow = fields
    else:
        raise ValueError(f"a cron has 5 fields (or 6 with seconds first), {len(fields)} given")
    try:
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_standard_day_of_week(dow),
            timezone=tz,
        )
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid cron {cron!r}: {exc}") from exc


def _cron_hour(cron: str) -> str:
    fields = cron.split()
    return fields[-4] if len(fields) >= 5 else "*"


def validate_schedule(
    *,
    cron: str | None = None,
    time_zone: str | None = "UTC",
    interval_s: int | None = None,
    once_at: datetime | None = None,
    misfire_policy: str | None = None,
    misfire_grace_s: int | None = None,
) -> None:
    """Check a schedule trigger's fields; ``Unprocessable`` naming the field if one is wrong.

    Exactly one of ``cron``, ``interval_s`` and ``once_at``.
    """
    given = [
        n for n, v in (("cron", cron), ("interval_s", interval_s), ("once_at", once_at)) if v is not None
    ]
    if len(given) != 1:
        raise Unprocessable(
            "a schedule has exactly one of cron, interval_s and once_at"
            + (f" ({', '.join(given)} given)" if given else ""),
            field=given[1] if len(given) > 1 else "cron",
        )
    try:
        zone(time_zone)
    except ValueError as exc:
        raise Unprocessable(str(exc), field="time_zone") from exc
    if cron is not None:
        try:
            cron_trigger(cron, time_zone)
        except ValueError as exc:
            raise Unprocessable(str(exc), field="cron") from exc
    if interval_s is not None and interval_s <= 0:
        raise Unprocessable("interval_s must be a positive number of seconds", field="interval_s")
    if once_at is not None and once_at.tzinfo is None:
        raise Unprocessable(
            "once_at needs a time zone offset (e.g. 2026-12-24T09:00:00+01:00)", field="once_at"
        )
    if misfire_policy is not None and misfire_policy not in {p.value for p in MisfirePolicy}:
        raise Unprocessable(
            f"misfire_policy is one of {', '.join(p.value for p in MisfirePolicy)}", field="misfire_policy"
        )
    if misfire_grace_s is not None and not 0 <= misfire_grace_s <= MAX_GRACE_S:
        raise Unprocessable(f"misfire_grace_s is between 0 and {MAX_GRACE_S}", field="misfire_grace_s")


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def schedule_of(trigger: Trigger, anchor: datetime | None = None) -> CronTrigger | IntervalTrigger | None:
    """The APScheduler trigger of a schedule trigger, None for a one-off (``once_at``) or no schedule.

    An interval counts from ``once_at`` when given (its start), else from the trigger's creation,
    so every replica computes the same occurrences.
    """
    if trigger.cron:
        return cron_trigger(trigger.cron, trigger.time_zone)
    if trigger.interval_s:
        start = trigger.once_at or trigger.created_at or anchor or utcnow()
        return IntervalTrigger(seconds=trigger.interval_s, start_date=_aware(start), timezone=UTC)
    return None


MAX_SKIPPED = 5000
"""Occurrences on non-working days passed over before giving up (a calendar with no working day)."""


def next_fire_times(
    trigger: Trigger,
    after: datetime,
    n: int,
    skip_day: Callable[[date], bool] | None = None,
    *,
    inclusive: bool = False,
    until: datetime | None = None,
) -> list[datetime]:
    """The next ``n`` occurrences of a schedule trigger strictly after ``after`` (at or after, if
    ``inclusive``; none after ``until``), in UTC, leaving out those whose day (in the trigger's
    time zone) ``skip_day`` says is not worked. ValueError for an invalid schedule."""
    out: list[datetime] = []
    if n <= 0:
        return out
    for t in fire_times(trigger, after, skip_day, inclusive=inclusive):
        if until is not None and t > until:
            break
        out.append(t)
        if len(out) >= n:
            break
    return out


def fire_times(
    trigger: Trigger,
    after: datetime,
    skip_day: Callable[[date], bool] | None = None,
    *,
    inclusive: bool = False,
) -> Iterator[datetime]:
    """The occurrences of a schedule trigger after ``after``, lazily, in UTC (see ``next_fire_times``)."""
    after = _aware(after).astimezone(UTC)
    tz = zone(trigger.time_zone)
    if trigger.once_at is not None and not trigger.cron and not trigger.interval_s:
        at = _aware(trigger.once_at).astimezone(UTC)
        if (at >= after if inclusive else at > after) and not (
            skip_day and skip_day(at.astimezone(tz).date())
        ):
            yield at
        return
    schedule = schedule_of(trigger)
    if schedule is None:
        return
    skipped = 0
    once_per_wall_time = bool(trigger.cron) and not _cron_hour(trigger.cron or "").startswith("*")
    previous: datetime | None = None
    now = after if inclusive else after + timedelta(microseconds=1)
    while skipped <= MAX_SKIPPED:
        t = schedule.get_next_fire_time(previous, now)
        if t is None:
            return
        t_utc = t.astimezone(UTC)
        local = t_utc.astimezone(tz)
        if once_per_wall_time and local.fold == 1:
            # The second pass of an hour repeated when clocks go back: a cron at a set hour ran
            # at this wall time already (an hour ago); hourly crons run each real hour.
            pass
        elif skip_day and skip_day(local.date()):
            skipped += 1
        else:
            yield t_utc
        previous = t
        now = t_utc + timedelta(microseconds=1)


@dataclass(frozen=True)
class CalendarRule:
    """A calendar's non-working days: its weekly days off, with dated exceptions either way."""

    weekend_days: frozenset[int]
    exceptions: dict[date, bool]
    """Day -> worked?"""

    def is_non_working(self, day: date) -> bool:
        worked = self.exceptions.get(day)
        if worked is not None:
            return not worked
        return day.isoweekday() in self.weekend_days


async def load_calendars(session: AsyncSession, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, CalendarRule]:
    """The rules of these calendars (missing ids are left out)."""
    wanted = set(ids)
    if not wanted:
        return {}
    rows = (
        await session.execute(sa.select(Calendar.id, Calendar.weekend_days).where(Calendar.id.in_(wanted)))
    ).all()
    days = (
        await session.execute(
            sa.select(CalendarDay.calendar_id, CalendarDay.day, CalendarDay.working).where(
                CalendarDay.calendar_id.in_(wanted)
            )
        )
    ).all()
    exceptions: dict[uuid.UUID, dict[date, bool]] = {r.id: {} for r in rows}
    for d in days:
        exceptions.setdefault(d.calendar_id, {})[d.day] = bool(d.working)
    return {
        r.id: CalendarRule(frozenset(int(x) for x in (r.weekend_days or [])), exceptions[r.id]) for r in rows
    }
