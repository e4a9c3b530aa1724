"""The scheduler's triggers: schedules (cron in a time zone, interval, once) and queue triggers.

Every replica holds every enabled schedule trigger in memory with the next occurrence it has not
decided yet, sleeps until the earliest one, and fires all that are due in batches through
``rpa_common.triggerflow.fire_many``: one multi-row insert-or-ignore of the occurrences' keys
(trigger, scheduled time in UTC) decides which replica creates each job, so each occurrence makes
exactly one job however many replicas run, and a replica that dies loses nothing while another
lives (docs/design/triggers.md).

Lateness: an occurrence fired at most ``ON_TIME_S`` after its time is on time (a stalled loop, a
busy database). Later than that it was missed (every replica down, or all stalled), and the
trigger's misfire policy decides: ``skip``, or ``fire_once``: the latest missed occurrence fires
once if it is no older than the trigger's grace time. The shared cursor is ``trigger.next_fire_at``
(written with each fire), so a replica starting after downtime knows what was missed.

Queue triggers are evaluated every ``QUEUE_EVERY_S`` by one replica at a time (the trigger's row is
locked, ``SKIP LOCKED``): start jobs while the queue has waiting tasks, within the trigger's limits.

Triggers are (re)loaded at start, on ``TRIGGER_CHANGED`` (that trigger only, within a second) and
every ``RELOAD_EVERY_S``, so a lost message only delays a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.aio import wait_event
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Job, Task, Trigger
from rpa_common.models.base import utcnow
from rpa_common.models.enums import JobState, MisfirePolicy, TaskState, TriggerKind
from rpa_common.nats import subjects
from rpa_common.service import ServiceContext
from rpa_common.triggerflow import (
    FireOutcome,
    Occurrence,
    fire_key_of,
    fire_many,
    fire_times,
    load_calendars,
    next_fire_times,
    set_next_fire_at,
)

log = structlog.get_logger(__name__)

ON_TIME_S = 10.0
"""An occurrence fired this late is still on time (stall, takeover); later, the misfire policy decides."""
RELOAD_EVERY_S = 30.0
"""All triggers are re-read this often even without ``TRIGGER_CHANGED`` (and calendars with them)."""
QUEUE_EVERY_S = 1.0
"""Queue triggers are evaluated this often."""
MAX_SLEEP_S = 1.0
"""The loop wakes at least this often (a clock jump, a change it missed)."""
BATCH = 1000
"""Occurrences fired per transaction."""
RETRY_S = 0.5
"""A batch whose transaction failed is planned again after this long (lateness then counts)."""
MAX_SCAN = 100_000
"""Occurrences looked at per trigger and wake-up, at most (a per-second trigger with a long grace)."""

ACTIVE_JOB_STATES = tuple(s for s in JobState if not s.is_final)

SkipDay = Callable[[date], bool]


@dataclass(frozen=True)
class Plan:
    """What one trigger does at one wake-up."""

    fire: list[datetime]
    missed: int
    """Occurrences passed over without a job (misfire policy)."""
    next_at: datetime | None
    """The next occurrence strictly after now."""


def plan(trigger: Trigger, next_at: datetime, now: datetime, skip_day: SkipDay | None) -> Plan:
    """The occurrences from ``next_at`` (an occurrence) to ``now`` that fire under the trigger's
    misfire policy. On time, this is ``[next_at]`` and one look-up of the occurrence after it."""
    fire_once = trigger.misfire_policy == MisfirePolicy.FIRE_ONCE
    window = max(ON_TIME_S, float(trigger.misfire_grace_s or 0) if fire_once else 0.0)
    start = max(next_at, now - timedelta(seconds=window))
    earlier = 0 if start == next_at else 1  # at least one occurrence before the window was missed
    times: list[datetime] = []
    nxt: datetime | None = None
    if start == next_at and next_at <= now:
        # next_at is an occurrence already: the look-up starts after it.
        times.append(next_at)
    for t in fire_times(trigger, start, skip_day, inclusive=not times):
        if t > now:
            nxt = t
            break
        times.append(t)
        if len(times) >= MAX_SCAN:
            break
    if nxt is None and len(times) >= MAX_SCAN:
        following = next_fire_times(trigger, now, 1, skip_day)
        nxt = following[0] if following else None
    on_time = [t for t in times if (now - t).total_seconds() <= ON_TIME_S]
    late = [t for t in times if (now - t).total_seconds() > ON_TIME_S]
    fire = on_time
    missed = len(late) + earlier
    if fire_once and late and (now - late[-1]).total_seconds() <= (trigger.misfire_grace_s or 0):
        fire = [late[-1], *on_time]
        missed -= 1
    return Plan(fire, missed, nxt)


def _schedule_spec(t: Trigger) -> tuple[Any, ...]:
    """What decides a trigger's occurrences: a change to one of these restarts it from now."""
    return (t.cron, t.time_zone, t.interval_s, t.once_at, t.calendar_id)


@dataclass
class _Entry:
    trigger: Trigger
    spec: tuple[Any, ...]
    skip_day: SkipDay | None
    next_at: datetime | None


class TriggerScheduler:
    """One replica's schedule and queue triggers; ``start``, then ``shutdown``."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.entries: dict[uuid.UUID, _Entry] = {}
        self.fired = 0
        """Jobs this replica created (for tests and logs)."""
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._schedule_loop(), name="triggers.schedule"),
            asyncio.create_task(self._queue_loop(), name="triggers.queue"),
            asyncio.create_task(self._reload_loop(), name="triggers.reload"),
        ]

    def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        self.shutdown()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # Loading

    async def reload(self) -> None:
        """Match the in-memory schedule to the enabled schedule triggers in the database."""
        await self._load(None)

    async def reload_one(self, trigger_id: uuid.UUID) -> None:
        """Reload one trigger (``TRIGGER_CHANGED``): added, changed, disabled or deleted."""
        await self._load(trigger_id)

    async def _load(self, trigger_id: uuid.UUID | None) -> None:
        wanted = (Trigger.kind == TriggerKind.SCHEDULE, Trigger.enabled.is_(True))
        async with self.ctx.sessions() as session:
            if trigger_id is not None:
                stmt = sa.select(Trigger).where(*wanted, Trigger.id == trigger_id)
                triggers = list((await session.execute(stmt)).scalars().all())
                seen = {t.id for t in triggers}
            else:
                # A full reload reads whole rows only of what changed (a fire leaves updated_at).
                stamps = (
                    await session.execute(sa.select(Trigger.id, Trigger.updated_at).where(*wanted))
                ).all()
                seen = {row.id for row in stamps}
                changed = [
                    row.id
                    for row in stamps
                    if (e := self.entries.get(row.id)) is None or e.trigger.updated_at != row.updated_at
                ]
                triggers = []
                for start in range(0, len(changed), 1000):
                    stmt = sa.select(Trigger).where(Trigger.id.in_(changed[start : start + 1000]))
                    triggers.extend((await session.execute(stmt)).scalars().all())
            calendar_ids = {t.calendar_id for t in triggers if t.calendar_id}
            if trigger_id is None:
                calendar_ids |= {
                    e.trigger.calendar_id for e in self.entries.values() if e.trigger.calendar_id
                }
            calendars = await load_calendars(session, calendar_ids)
        if trigger_id is None:
            # Calendars change without TRIGGER_CHANGED: every full reload refreshes their rules.
            for e in self.entries.values():
                if e.trigger.calendar_id is not None and e.trigger.id in seen:
                    rule = calendars.get(e.trigger.calendar_id)
                    e.skip_day = rule.is_non_working if rule is not None else None
        now = utcnow()
        cursors: dict[uuid.UUID, datetime | None] = {}
        for t in triggers:
            rule = calendars.get(t.calendar_id) if t.calendar_id else None
            skip_day = rule.is_non_working if rule is not None else None
            spec = _schedule_spec(t)
            entry = self.entries.get(t.id)
            try:
                if entry is not None and entry.spec == spec:
                    entry.trigger, entry.skip_day = t, skip_day
                    continue
                # New to this replica: from the shared cursor (what was missed while no replica
                # ran is then caught up by the misfire policy); a changed schedule: from now.
                begin = t.next_fire_at if entry is None and t.next_fire_at is not None else now
                nxt = next_fire_times(t, begin, 1, skip_day, inclusive=True)
            except ValueError as exc:
                log.warning("trigger.invalid", trigger_id=str(t.id), error=str(exc))
                self.entries.pop(t.id, None)
                continue
            self.entries[t.id] = _Entry(t, spec, skip_day, nxt[0] if nxt else None)
            if entry is not None or t.next_fire_at is None:
                cursors[t.id] = nxt[0] if nxt else None
        gone = [tid for tid in self.entries if tid not in seen and (trigger_id is None or tid == trigger_id)]
        for tid in gone:
            del self.entries[tid]
        if cursors:
            await self._store_cursors(cursors)
        self._changed.set()
        log.debug("triggers.loaded", count=len(self.entries), changed=len(cursors), removed=len(gone))

    async def _store_cursors(self, cursors: dict[uuid.UUID, datetime | None]) -> None:
        """Write ``next_fire_at`` of triggers that fired nothing (new, changed, or all missed)."""

        async def work(session: AsyncSession) -> None:
            await set_next_fire_at(session, cursors)

        await run_in_transaction(self.ctx.sessions, work, attempts=self.ctx.settings.db_retry_attempts)

    # Schedules

    async def _schedule_loop(self) -> None:
        while True:
            # Cleared before the pass: a reload during it wakes the next wait at once.
            self._changed.clear()
            try:
                await self.fire_due(utcnow())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("triggers.fire_failed")
                await asyncio.sleep(RETRY_S)  # the database is away: not a busy loop
                continue
            delay = MAX_SLEEP_S
            times = [e.next_at for e in self.entries.values() if e.next_at is not None]
            if times:
                delay = min(delay, max(0.0, (min(times) - utcnow()).total_seconds()))
            await wait_event(self._changed, delay)

    async def fire_due(self, now: datetime) -> list[FireOutcome]:
        """Fire every occurrence due at ``now`` (in batches); returns the outcomes."""
        due = [e for e in self.entries.values() if e.next_at is not None and e.next_at <= now]
        if not due:
            return []
        occurrences: list[Occurrence] = []
        advanced: dict[uuid.UUID, datetime | None] = {}
        plans: list[tuple[_Entry, Plan]] = []
        for entry in due:
            assert entry.next_at is not None
            try:
                p = plan(entry.trigger, entry.next_at, now, entry.skip_day)
            except ValueError as exc:
                log.warning("trigger.invalid", trigger_id=str(entry.trigger.id), error=str(exc))
                entry.next_at = None
                continue
            plans.append((entry, p))
            if p.missed:
                log.warning(
                    "trigger.missed",
                    trigger_id=str(entry.trigger.id),
                    missed=p.missed,
                    policy=str(entry.trigger.misfire_policy),
                )
            for t in p.fire:
                occurrences.append(
                    Occurrence(entry.trigger, fire_key_of(t), t, next_fire_at=p.next_at, sets_next=True)
                )
            if not p.fire:
                advanced[entry.trigger.id] = p.next_at
        outcomes: list[FireOutcome] = []
        for start in range(0, len(occurrences), BATCH):
            outcomes.extend(await self._fire_batch(occurrences[start : start + BATCH]))
        if advanced:
            await self._store_cursors(advanced)
        # Only now, every batch committed: a failed one is planned again on the next wake-up.
        for entry, p in plans:
            entry.next_at = p.next_at
        return outcomes

    async def _fire_batch(self, batch: Sequence[Occurrence]) -> list[FireOutcome]:
        async def work(session: AsyncSession) -> list[FireOutcome]:
            return await fire_many(session, batch)

        outcomes = await run_in_transaction(
            self.ctx.sessions, work, attempts=self.ctx.settings.db_retry_attempts
        )
        created = 0
        for outcome in outcomes:
            if outcome.message is not None:
                created += 1
                await self.ctx.publish(subjects.JOB_CREATED, outcome.message.encode())
        self.fired += created
        if created:
            log.info("triggers.fired", occurrences=len(batch), jobs=created)
        return outcomes

    # Queue triggers

    async def _queue_loop(self) -> None:
        while True:
            try:
                await queue_pass(self.ctx)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("triggers.queue_failed")
            await asyncio.sleep(QUEUE_EVERY_S)

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_EVERY_S)
            try:
                await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("triggers.reload_failed")


def jobs_to_start(waiting: int, active: int, *, min_tasks: int, max_jobs: int, jobs_per_tasks: int) -> int:
    """How many more jobs a queue trigger starts.

    None before ``min_tasks`` tasks wait (unless its jobs already run); then one job per
    ``jobs_per_tasks`` waiting tasks (rounded up), at most ``max_jobs`` at a time, counting the
    trigger's jobs not yet ended.
    """
    if waiting <= 0 or (active == 0 and waiting < max(min_tasks, 1)):
        return 0
    wanted = min(max(max_jobs, 0), math.ceil(waiting / max(jobs_per_tasks, 1)))
    return max(0, wanted - active)


async def queue_pass(ctx: ServiceContext) -> int:
    """Evaluate every enabled queue trigger once; returns the number of jobs created."""
    async with ctx.sessions() as session:
        ids = list(
            (
                await session.execute(
                    sa.select(Trigger.id).where(
                        Trigger.kind == TriggerKind.QUEUE,
                        Trigger.enabled.is_(True),
                        Trigger.queue_id.is_not(None),
                    )
                )
            )
            .scalars()
            .all()
        )
    created = 0
    for trigger_id in ids:
        created += await _queue_trigger(ctx, trigger_id)
    return created


async def _queue_trigger(ctx: ServiceContext, trigger_id: uuid.UUID) -> int:
    async def work(session: AsyncSession) -> list[FireOutcome]:
        # One replica at a time counts and starts; another skips this trigger for this pass.
        trig = (
            await session.execute(
                sa.select(Trigger)
                .where(Trigger.id == trigger_id, Trigger.enabled.is_(True))
                .with_for_update(skip_locked=True)
            )
        ).scalar_one_or_none()
        if trig is None or trig.queue_id is None:
            return []
        waiting = await session.scalar(
            sa.select(sa.func.count())
            .select_from(Task)
            .where(Task.queue_id == trig.queue_id, Task.state == TaskState.CREATED)
        )
        active = await session.scalar(
            sa.select(sa.func.count())
            .select_from(Job)
            .where(Job.trigger_id == trig.id, Job.state.in_(ACTIVE_JOB_STATES))
        )
        n = jobs_to_start(
            int(waiting or 0),
            int(active or 0),
            min_tasks=trig.min_tasks,
            max_jobs=trig.max_jobs,
            jobs_per_tasks=trig.jobs_per_tasks,
        )
        if n == 0:
            return []
        occurrences = [Occurrence(trig, f"queue {uuid.uuid4()}") for _ in range(n)]
        return await fire_many(session, occurrences)

    outcomes = await run_in_transaction(ctx.sessions, work, attempts=ctx.settings.db_retry_attempts)
    created = 0
    for outcome in outcomes:
        if outcome.message is not None:
            created += 1
            await ctx.publish(subjects.JOB_CREATED, outcome.message.encode())
    return created
