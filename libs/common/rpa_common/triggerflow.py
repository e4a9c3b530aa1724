"""Firing a trigger, shared by the API (test fire, webhooks, robot commands) and the scheduler.

An occurrence of a trigger is identified by ``(trigger_id, fire_key)``: the scheduled time in UTC
for schedules, a request or event id for the other kinds. ``fire_many`` writes the occurrences'
``trigger_fire`` rows with one multi-row insert-or-ignore, each batch under its own claim token,
reads back which rows hold its token, and creates the jobs of those only, in the caller's
transaction. Any number of scheduler replicas may fire the same occurrence: exactly one creates
its job, the others change nothing (see docs/design/triggers.md).

Also here: the schedule kinds' fire times (``next_fire_times``, through APScheduler's triggers, so
cron in a time zone is DST-correct), their validation (``validate_schedule``) and calendars.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
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
from rpa_common.jobflow import created_message, record_creation
from rpa_common.models import Job, Process, Trigger, TriggerFire
from rpa_common.models.base import UTCDateTime, utcnow
from rpa_common.models.enums import ActorType, JobSource, JobState, MisfirePolicy, TriggerKind
from rpa_common.models.triggers import Calendar, CalendarDay
from rpa_common.nats.messages import JobCreated
from rpa_common.taskflow import Actor

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

    Statements: one select of the processes' versions, one multi-row insert-or-ignore of the fire
    rows, one select of those this call won, one flush of the jobs and their history, one update
    of the triggers. Rows are written in key order so two replicas firing the same batch wait on
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
    await session.execute(_insert_ignore(session, table).values(rows))
    won: set[tuple[uuid.UUID, str]] = set()
    keys = [(r["trigger_id"], r["fire_key"]) for r in rows]
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        won.update(
            (
                await session.execute(
                    sa.select(TriggerFire.trigger_id, TriggerFire.fire_key).where(
                        sa.tuple_(TriggerFire.trigger_id, TriggerFire.fire_key).in_(chunk),
                        TriggerFire.claim == claim,
                    )
                )
            ).all()
        )
    outcomes: list[FireOutcome] = []
    jobs: list[Job] = []
    kinds: dict[str, int] = {}
    last: dict[uuid.UUID, tuple[Occurrence, uuid.UUID | None, str]] = {}
    for o, result, job_id in planned:
        t = o.trigger
        if (t.id, o.fire_key) not in won:
            outcomes.append(FireOutcome(None, False, ALREADY_FIRED))
            continue
        if job_id is None:
            outcomes.append(FireOutcome(None, False, result))
            last[t.id] = (o, None, result)
            continue
        job = Job(
            id=job_id,
            account_id=t.account_id,
            process_id=t.process_id,
            process_version_id=versions[t.process_id],
            robot_id=t.robot_id,
            robot_group_id=None if t.robot_id is not None else t.robot_group_id,
            trigger_id=t.id,
            parent_job_id=o.parent_job_id,
            state=JobState.PENDING,
            priority=t.priority,
            source=_SOURCES.get(t.kind, JobSource.TRIGGER),
            input_args={**(t.input_args or {}), **(o.input_args or {})},
            max_retries=0,
            attempt=0,
            offers=0,
            created_at=now,
            updated_at=now,
        )
        session.add(job)
        record_creation(session, job, Actor(ActorType.TRIGGER, t.id), f"{t.kind} trigger {o.fire_key}"[:1000])
        jobs.append(job)
        kinds[str(t.kind)] = kinds.get(str(t.kind), 0) + 1
        outcomes.append(FireOutcome(job_id, True, None, created_message(job)))
        last[t.id] = (o, job_id, CREATED)
    if jobs:
        await session.flush()
    await _record_last(session, last, now)
    for kind, count in kinds.items():
        metrics.TRIGGER_FIRES.labels(kind).inc(count)
    return outcomes


async def _record_last(
    session: AsyncSession, last: dict[uuid.UUID, tuple[Occurrence, uuid.UUID | None, str]], now: datetime
) -> None:
    """The triggers' last fire, job and result (and next fire for schedules): one UPDATE per 500."""
    items = sorted(last.items(), key=lambda kv: str(kv[0]))
    for start in range(0, len(items), 500):
        chunk = items[start : start + 500]
        ids = [tid for tid, _ in chunk]
        values: dict[str, Any] = {
            "last_fired_at": now,
            "last_job_id": by_trigger_id({tid: jid for tid, (_, jid, _) in chunk}, sa.Uuid()),
            "last_result": by_trigger_id({tid: res for tid, (_, _, res) in chunk}, sa.String(300)),
        }
        with_next = {tid: o.next_fire_at for tid, (o, _, _) in chunk if o.sets_next}
        if with_next:
            values["next_fire_at"] = by_trigger_id(with_next, UTCDateTime(), else_=Trigger.next_fire_at)
        await session.execute(
            sa.update(Trigger)
            .where(Trigger.id.in_(ids))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        for _tid, (o, jid, res) in chunk:
            t = o.trigger
            if sa.inspect(t, raiseerr=False) is not None and t in session:
                set_committed_value(t, "last_fired_at", now)
                set_committed_value(t, "last_job_id", jid)
                set_committed_value(t, "last_result", res)
                if o.sets_next:
                    set_committed_value(t, "next_fire_at", o.next_fire_at)


def by_trigger_id(values: dict[uuid.UUID, Any], type_: Any, else_: Any = None) -> Any:
    """``CASE`` giving each trigger (by id) its value, typed so both databases bind it right."""
    null = sa.cast(sa.null(), type_)  # a CASE of NULLs only has no type on PostgreSQL
    whens = [(Trigger.id == tid, null if v is None else sa.literal(v, type_)) for tid, v in values.items()]
    return sa.case(*whens, else_=else_ if else_ is not None else null)


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
    after = _aware(after).astimezone(UTC)
    if n <= 0:
        return []
    tz = zone(trigger.time_zone)
    out: list[datetime] = []
    if trigger.once_at is not None and not trigger.cron and not trigger.interval_s:
        at = _aware(trigger.once_at).astimezone(UTC)
        ok = (at >= after if inclusive else at > after) and (until is None or at <= until)
        if ok and not (skip_day and skip_day(at.astimezone(tz).date())):
            out.append(at)
        return out
    schedule = schedule_of(trigger)
    if schedule is None:
        return out
    skipped = 0
    once_per_wall_time = bool(trigger.cron) and not _cron_hour(trigger.cron or "").startswith("*")
    previous: datetime | None = None
    now = after if inclusive else after + timedelta(microseconds=1)
    while len(out) < n and skipped <= MAX_SKIPPED:
        t = schedule.get_next_fire_time(previous, now)
        if t is None:
            break
        t_utc = t.astimezone(UTC)
        if until is not None and t_utc > until:
            break
        local = t_utc.astimezone(tz)
        if once_per_wall_time and local.fold == 1:
            # The second pass of an hour repeated when clocks go back: a cron at a set hour ran
            # at this wall time already (an hour ago); hourly crons run each real hour.
            pass
        elif skip_day and skip_day(local.date()):
            skipped += 1
        else:
            out.append(t_utc)
        previous = t
        now = t_utc + timedelta(microseconds=1)
    return out


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
