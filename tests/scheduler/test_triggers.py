"""Triggers on the scheduler side: one job per occurrence, DST, calendars, misfires, queue triggers."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from rpa_common import metrics
from rpa_common.db.uow import run_in_transaction
from rpa_common.errors import Unprocessable
from rpa_common.models import Job, Process, Queue, Task, Trigger, TriggerFire
from rpa_common.models.base import utcnow
from rpa_common.models.enums import JobPriority, JobSource, JobState, MisfirePolicy, TaskState, TriggerKind
from rpa_common.models.triggers import Calendar, CalendarDay
from rpa_common.nats import subjects
from rpa_common.nats.messages import TriggerChanged
from rpa_common.service import ServiceContext
from rpa_common.triggerflow import (
    ALREADY_FIRED,
    DISABLED,
    NO_VERSION,
    CalendarRule,
    fire,
    fire_key_of,
    load_calendars,
    next_fire_times,
    validate_schedule,
)
from rpa_scheduler.service import Scheduler
from rpa_scheduler.triggers import TriggerScheduler, jobs_to_start, plan, queue_pass
from tests.scheduler.factory import World, listen, new_world
from tests.support import eventually


async def add_trigger(world: World, robot_id: uuid.UUID | None, **fields: Any) -> uuid.UUID:
    tid = uuid.uuid4()
    values: dict[str, Any] = {
        "kind": TriggerKind.SCHEDULE,
        "priority": JobPriority.HIGH,
        "input_args": {"region": "EU"},
        "cron": "0 9 * * 1-5",
        "time_zone": "Europe/Paris",
    }
    values.update(fields)

    async def work(session: Any) -> None:
        session.add(
            Trigger(
                id=tid,
                account_id=world.account_id,
                name=f"trigger-{tid.hex[:8]}",
                process_id=world.process_id,
                robot_id=robot_id,
                **values,
            )
        )

    await run_in_transaction(world.ctx.sessions, work)
    return tid


async def fire_now(
    ctx: ServiceContext, trigger_id: uuid.UUID, at: datetime, **kw: Any
) -> tuple[uuid.UUID | None, str | None]:
    async def work(session: Any) -> Any:
        trig = await session.get(Trigger, trigger_id)
        return await fire(session, trig, fire_key=fire_key_of(at), scheduled_at=at, **kw)

    outcome = await run_in_transaction(ctx.sessions, work)
    return outcome.job_id, outcome.reason


async def fires_of(ctx: ServiceContext, trigger_id: uuid.UUID) -> list[TriggerFire]:
    async with ctx.sessions() as session:
        rows = await session.execute(
            sa.select(TriggerFire).where(TriggerFire.trigger_id == trigger_id).order_by(TriggerFire.fire_key)
        )
        return list(rows.scalars().all())


async def test_an_occurrence_fired_by_two_replicas_creates_one_job(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    trigger = await add_trigger(world, robot)
    occurrence = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # 09:00 in Paris
    before = metrics.TRIGGER_FIRES.labels("schedule")._value.get()
    results = await asyncio.gather(*(fire_now(ctx, trigger, occurrence) for _ in range(3)))
    created = [job_id for job_id, _ in results if job_id is not None]
    assert len(created) == 1, results
    assert sorted(reason or "" for _, reason in results) == ["", ALREADY_FIRED, ALREADY_FIRED]
    assert metrics.TRIGGER_FIRES.labels("schedule")._value.get() == before + 1
    jobs = await world.jobs()
    assert [j.id for j in jobs] == created
    job = jobs[0]
    assert (job.state, job.source, job.trigger_id, job.robot_id, job.priority, job.input_args) == (
        JobState.PENDING,
        JobSource.TRIGGER,
        trigger,
        robot,
        JobPriority.HIGH,
        {"region": "EU"},
    )
    [row] = await fires_of(ctx, trigger)
    assert (row.fire_key, row.job_id, row.scheduled_at, row.result) == (
        "2026-03-02T08:00:00+00:00",
        job.id,
        occurrence,
        "created",
    )
    trig = await world.get(Trigger, trigger)
    assert (trig.last_job_id, trig.last_result) == (job.id, "created")
    # The next occurrence is another job; arguments given with a fire are merged over the trigger's.
    job_id, _ = await fire_now(ctx, trigger, occurrence + timedelta(days=1), input_args={"day": 2})
    assert job_id is not None
    assert (await world.get(Job, job_id)).input_args == {"region": "EU", "day": 2}


async def test_disabled_trigger_or_no_version_record_why_no_job(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    trigger = await add_trigger(world, await world.robot(), enabled=False)
    at = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    assert await fire_now(ctx, trigger, at) == (None, DISABLED)
    # A person's "test" fire of a disabled trigger is allowed.
    job_id, _ = await fire_now(ctx, trigger, at + timedelta(days=1), allow_disabled=True)
    assert job_id is not None
    await world.set(Process, world.process_id, current_version_id=None)
    assert await fire_now(ctx, trigger, at + timedelta(days=2), allow_disabled=True) == (None, NO_VERSION)
    assert [(f.job_id is not None, f.result) for f in await fires_of(ctx, trigger)] == [
        (False, DISABLED),
        (True, "created"),
        (False, NO_VERSION),
    ]
    assert (await world.get(Trigger, trigger)).last_result == NO_VERSION
    assert len(await world.jobs()) == 1


def schedule(cron: str | None = None, tz: str = "UTC", **fields: Any) -> Trigger:
    return Trigger(cron=cron, time_zone=tz, **fields)


def test_cron_in_europe_berlin_across_both_dst_changes() -> None:
    # Spring forward (2026-03-29, 02:00 -> 03:00): 09:00 stays 09:00 local, one hour earlier in UTC.
    morning = next_fire_times(
        schedule("0 9 * * *", "Europe/Berlin"), datetime(2026, 3, 27, 12, tzinfo=UTC), 3
    )
    assert [t.isoformat() for t in morning] == [
        "2026-03-28T08:00:00+00:00",
        "2026-03-29T07:00:00+00:00",
        "2026-03-30T07:00:00+00:00",
    ]
    # 02:30 does not exist that night: it runs once, at 03:30 CEST.
    gap = next_fire_times(schedule("30 2 * * *", "Europe/Berlin"), datetime(2026, 3, 28, 12, tzinfo=UTC), 2)
    assert [t.isoformat() for t in gap] == ["2026-03-29T01:30:00+00:00", "2026-03-30T00:30:00+00:00"]
    # Fall back (2026-10-25, 03:00 -> 02:00): 02:30 happens twice, a daily job runs once.
    twice = next_fire_times(
        schedule("30 2 * * *", "Europe/Berlin"), datetime(2026, 10, 24, 12, tzinfo=UTC), 2
    )
    assert [t.isoformat() for t in twice] == ["2026-10-25T00:30:00+00:00", "2026-10-26T01:30:00+00:00"]
    # An hourly job runs every real hour: 25 runs that day, one hour apart each.
    hourly = next_fire_times(
        schedule("0 * * * *", "Europe/Berlin"), datetime(2026, 10, 24, 21, 59, tzinfo=UTC), 30
    )
    that_day = [t for t in hourly if t.astimezone(ZoneInfo("Europe/Berlin")).date() == date(2026, 10, 25)]
    assert len(that_day) == 25
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(hourly))


def test_cron_in_america_new_york_across_both_dst_changes() -> None:
    # Spring forward (2026-03-08): 09:00 EST (14:00 UTC) becomes 09:00 EDT (13:00 UTC).
    morning = next_fire_times(
        schedule("0 9 * * 1-5", "America/New_York"), datetime(2026, 3, 5, 15, tzinfo=UTC), 3
    )
    assert [t.isoformat() for t in morning] == [
        "2026-03-06T14:00:00+00:00",  # Friday
        "2026-03-09T13:00:00+00:00",  # Monday, after the change
        "2026-03-10T13:00:00+00:00",
    ]
    # Fall back (2026-11-01): 01:30 happens twice, the job runs once (at the first, EDT).
    repeated = next_fire_times(
        schedule("30 1 * * *", "America/New_York"), datetime(2026, 10, 31, 12, tzinfo=UTC), 2
    )
    assert [t.isoformat() for t in repeated] == ["2026-11-01T05:30:00+00:00", "2026-11-02T06:30:00+00:00"]
    # Standard cron weekdays: 0 and 7 are Sunday.
    sundays = [
        next_fire_times(schedule(f"15 8 * * {d}"), datetime(2026, 3, 27, tzinfo=UTC), 1)[0] for d in (0, 7)
    ]
    assert sundays[0] == sundays[1] and sundays[0].date() == date(2026, 3, 29)


def test_interval_and_once() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    every = schedule(None, interval_s=90, once_at=start)
    assert next_fire_times(every, datetime(2026, 1, 1, 0, 2, tzinfo=UTC), 2) == [
        start + timedelta(seconds=180),
        start + timedelta(seconds=270),
    ]
    once = schedule(None, once_at=start)
    assert next_fire_times(once, start - timedelta(seconds=1), 5) == [start]
    assert next_fire_times(once, start, 5) == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * *"}, "cron"),
        ({"cron": "0 9 * * *", "time_zone": "Mars/Olympus"}, "time_zone"),
        ({"interval_s": 0}, "interval_s"),
        ({"once_at": datetime(2026, 1, 1)}, "once_at"),
        ({"cron": "0 9 * * *", "interval_s": 60}, "interval_s"),
        ({"cron": "0 9 * * *", "misfire_policy": "later"}, "misfire_policy"),
        ({"cron": "0 9 * * *", "misfire_grace_s": -1}, "misfire_grace_s"),
    ],
)
def test_invalid_schedules_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(Unprocessable) as err:
        validate_schedule(**fields)
    assert err.value.field == field, err.value.detail
    validate_schedule(cron="*/5 * * * * *", time_zone="Europe/Berlin")  # seconds first: valid


async def test_calendar_non_working_days_are_skipped(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    cal = uuid.uuid4()

    async def work(session: Any) -> None:
        session.add(
            Calendar(id=cal, account_id=world.account_id, name=f"cal-{cal.hex[:6]}", weekend_days=[6, 7])
        )
        await session.flush()
        session.add(CalendarDay(calendar_id=cal, day=date(2026, 4, 6), working=False, note="Easter Monday"))
        session.add(CalendarDay(calendar_id=cal, day=date(2026, 4, 11), working=True, note="worked Saturday"))

    await run_in_transaction(ctx.sessions, work)
    async with ctx.sessions() as session:
        rule = (await load_calendars(session, [cal]))[cal]
    assert rule == CalendarRule(frozenset({6, 7}), {date(2026, 4, 6): False, date(2026, 4, 11): True})
    daily = schedule("0 7 * * *", "Europe/Berlin")
    days = [
        t.date().isoformat()
        for t in next_fire_times(daily, datetime(2026, 4, 3, 12, tzinfo=UTC), 6, rule.is_non_working)
    ]
    # Fri 3 passed; Sat 4, Sun 5, Mon 6 (holiday) skipped; Sat 11 worked; Sun 12 skipped.
    assert days == ["2026-04-07", "2026-04-08", "2026-04-09", "2026-04-10", "2026-04-11", "2026-04-13"]


def test_misfire_policy_after_downtime() -> None:
    now = datetime(2026, 5, 4, 12, 0, 5, tzinfo=UTC)
    every_minute = schedule("* * * * *", misfire_policy=MisfirePolicy.FIRE_ONCE, misfire_grace_s=300)
    # Down since 11:56: 11:57..11:59 were missed and coalesce into one fire of 11:59 (fire_once);
    # 12:00:00 is 5 s late only: on time, it fires too.
    p = plan(every_minute, datetime(2026, 5, 4, 11, 57, tzinfo=UTC), now, None)
    assert p.fire == [datetime(2026, 5, 4, 11, 59, tzinfo=UTC), datetime(2026, 5, 4, 12, 0, tzinfo=UTC)]
    assert p.next_at == datetime(2026, 5, 4, 12, 1, tzinfo=UTC)
    assert p.missed == 2
    # Skip: only what is on time.
    every_minute.misfire_policy = MisfirePolicy.SKIP
    p = plan(every_minute, datetime(2026, 5, 4, 11, 51, tzinfo=UTC), now, None)
    assert p.fire == [datetime(2026, 5, 4, 12, 0, tzinfo=UTC)]
    # fire_once beyond the grace time: nothing of the missed ones.
    daily = schedule("0 6 * * *", misfire_policy=MisfirePolicy.FIRE_ONCE, misfire_grace_s=3600)
    assert plan(daily, datetime(2026, 5, 4, 6, tzinfo=UTC), now, None).fire == []
    daily.misfire_grace_s = 7 * 3600
    assert plan(daily, datetime(2026, 5, 4, 6, tzinfo=UTC), now, None).fire == [
        datetime(2026, 5, 4, 6, tzinfo=UTC)
    ]


async def test_a_replica_starting_after_downtime_applies_the_misfire_policy(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    missed_at = (utcnow() - timedelta(seconds=60)).replace(microsecond=0)
    kw: dict[str, Any] = {"cron": None, "interval_s": 3600, "once_at": missed_at, "next_fire_at": missed_at}
    once = await add_trigger(world, robot, misfire_policy=MisfirePolicy.FIRE_ONCE, misfire_grace_s=300, **kw)
    skip = await add_trigger(world, robot, misfire_policy=MisfirePolicy.SKIP, **kw)
    late = await add_trigger(world, robot, misfire_policy=MisfirePolicy.FIRE_ONCE, misfire_grace_s=30, **kw)
    ts = TriggerScheduler(ctx)
    for tid in (once, skip, late):
        await ts.reload_one(tid)
    await ts.fire_due(utcnow())
    jobs = await world.jobs()
    assert [j.trigger_id for j in jobs] == [once]
    assert [(f.fire_key, f.result) for f in await fires_of(ctx, once)] == [
        (fire_key_of(missed_at), "created")
    ]
    for tid in (once, skip, late):
        trig = await world.get(Trigger, tid)
        assert trig.next_fire_at == missed_at + timedelta(hours=1), tid
    # Another replica coming up now fires nothing more.
    other = TriggerScheduler(ctx)
    for tid in (once, skip, late):
        await other.reload_one(tid)
    await other.fire_due(utcnow())
    assert len(await world.jobs()) == 1


async def test_a_change_reaches_the_replica_within_a_second(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    trigger = await add_trigger(world, robot, cron="* * * * * *", time_zone="UTC")  # every second
    scheduler = Scheduler(ctx, sweeps=False, queue=f"q-{uuid.uuid4().hex[:8]}")
    await scheduler.start()
    try:
        assert scheduler.triggers is not None
        await eventually(lambda: _count_jobs(ctx, trigger, at_least=2), timeout=10)
        await world.set(Trigger, trigger, enabled=False)
        changed = TriggerChanged(account_id=world.account_id, trigger_id=trigger, change="updated")
        await ctx.publish(subjects.TRIGGER_CHANGED, changed.encode())
        triggers = scheduler.triggers

        async def unloaded() -> bool:
            return trigger not in triggers.entries

        await eventually(unloaded, timeout=1.5)
        n = len(await world.jobs())
        await asyncio.sleep(1.5)
        assert len(await world.jobs()) <= n + 1  # at most one already in flight
    finally:
        await scheduler.stop()
    fires = await fires_of(ctx, trigger)
    keys = sorted(datetime.fromisoformat(f.fire_key) for f in fires)
    assert all((b - a) == timedelta(seconds=1) for a, b in itertools.pairwise(keys)), keys


async def _count_jobs(ctx: ServiceContext, trigger: uuid.UUID, at_least: int) -> bool:
    async with ctx.sessions() as session:
        n = await session.scalar(sa.select(sa.func.count()).select_from(Job).where(Job.trigger_id == trigger))
    return int(n or 0) >= at_least


def test_jobs_to_start() -> None:
    limits = {"min_tasks": 3, "max_jobs": 4, "jobs_per_tasks": 10}
    assert jobs_to_start(2, 0, **limits) == 0  # fewer than the minimum
    assert jobs_to_start(3, 0, **limits) == 1
    assert jobs_to_start(25, 0, **limits) == 3
    assert jobs_to_start(25, 2, **limits) == 1
    assert jobs_to_start(100, 0, **limits) == 4  # at most max_jobs
    assert jobs_to_start(100, 4, **limits) == 0
    assert jobs_to_start(1, 1, **limits) == 0  # one job runs already for the one task left
    assert jobs_to_start(0, 0, **limits) == 0


async def test_queue_trigger_respects_its_concurrency_limit(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    queue_id = uuid.uuid4()

    async def work(session: Any) -> None:
        session.add(Queue(id=queue_id, account_id=world.account_id, name=f"q-{queue_id.hex[:8]}"))
        await session.flush()
        for i in range(7):
            session.add(
                Task(account_id=world.account_id, queue_id=queue_id, name=f"t{i}", state=TaskState.CREATED)
            )

    await run_in_transaction(ctx.sessions, work)
    trigger = await add_trigger(
        world,
        robot,
        kind=TriggerKind.QUEUE,
        cron=None,
        queue_id=queue_id,
        min_tasks=2,
        max_jobs=2,
        jobs_per_tasks=3,
    )
    # Three replicas evaluate at once: still two jobs (7 tasks / 3 per job = 3, at most 2).
    async with listen(ctx, subjects.JOB_CREATED) as inbox:
        await asyncio.gather(queue_pass(ctx), queue_pass(ctx), queue_pass(ctx))
        await inbox.wait_for(lambda m: True)
    mine = [j for j in await world.jobs() if j.trigger_id == trigger]
    assert len(mine) == 2
    await queue_pass(ctx)
    assert len([j for j in await world.jobs() if j.trigger_id == trigger]) == 2
    # One ends: one more starts.
    await world.set(Job, mine[0].id, state=JobState.SUCCESSFUL)
    await queue_pass(ctx)
    assert len([j for j in await world.jobs() if j.trigger_id == trigger]) == 3
