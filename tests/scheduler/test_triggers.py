"""Schedule triggers: one job per occurrence, whichever replicas fire it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Job, Trigger, TriggerFire
from rpa_common.models.enums import JobPriority, JobSource, JobState, TriggerKind
from rpa_common.nats import subjects
from rpa_common.service import ServiceContext
from rpa_scheduler.triggers import TriggerScheduler, cron_trigger, fire_trigger, occurrence_at_or_before
from tests.scheduler.factory import World, listen, new_world


async def schedule_trigger(
    world: World, robot_id: uuid.UUID, cron: str = "0 9 * * 1-5", tz: str = "Europe/Paris"
) -> uuid.UUID:
    tid = uuid.uuid4()

    async def work(session):  # type: ignore[no-untyped-def]
        session.add(
            Trigger(
                id=tid,
                account_id=world.account_id,
                name=f"every-morning-{tid.hex[:6]}",
                kind=TriggerKind.SCHEDULE,
                process_id=world.process_id,
                robot_id=robot_id,
                priority=JobPriority.HIGH,
                input_args={"region": "EU"},
                cron=cron,
                time_zone=tz,
            )
        )

    await run_in_transaction(world.ctx.sessions, work)
    return tid


async def test_an_occurrence_fired_by_two_replicas_creates_one_job(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    trigger = await schedule_trigger(world, robot)
    occurrence = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # 09:00 in Paris
    async with listen(ctx, subjects.JOB_CREATED) as inbox:
        results = await asyncio.gather(
            fire_trigger(ctx, trigger, occurrence), fire_trigger(ctx, trigger, occurrence)
        )
        created = [r for r in results if r is not None]
        assert len(created) == 1, results
        await inbox.wait_for(lambda m: m["job_id"] == str(created[0]))
    # A third replica, late: still one job.
    assert await fire_trigger(ctx, trigger, occurrence) is None
    jobs = await world.jobs()
    assert [j.id for j in jobs] == created
    job = jobs[0]
    assert (job.state, job.source, job.trigger_id, job.robot_id) == (
        JobState.PENDING,
        JobSource.TRIGGER,
        trigger,
        robot,
    )
    assert (job.priority, job.input_args, job.process_version_id) == (
        JobPriority.HIGH,
        {"region": "EU"},
        world.version_id,
    )
    async with ctx.sessions() as session:
        fires = (
            (await session.execute(sa.select(TriggerFire).where(TriggerFire.trigger_id == trigger)))
            .scalars()
            .all()
        )
    assert [(f.fire_key, f.job_id) for f in fires] == [("2026-03-02T08:00:00+00:00", job.id)]

    # The next occurrence is another job.
    assert await fire_trigger(ctx, trigger, datetime(2026, 3, 3, 8, 0, tzinfo=UTC)) is not None
    assert len(await world.jobs()) == 2


async def test_disabled_trigger_creates_nothing(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    trigger = await schedule_trigger(world, await world.robot())
    await world.set(Trigger, trigger, enabled=False)
    assert await fire_trigger(ctx, trigger, datetime(2026, 3, 2, 8, 0, tzinfo=UTC)) is None
    assert await world.jobs() == []


def test_cron_runs_in_the_triggers_time_zone() -> None:
    cron = cron_trigger("0 9 * * 1-5", "Europe/Paris")
    # Friday 2026-03-27 10:00 UTC: the next fire is Monday 09:00 Paris, after the DST change (UTC+2).
    nxt = cron.get_next_fire_time(None, datetime(2026, 3, 27, 10, 0, tzinfo=UTC))
    assert nxt is not None and nxt.astimezone(UTC) == datetime(2026, 3, 30, 7, 0, tzinfo=UTC)
    # APScheduler calls the job a little after the scheduled time: the occurrence is found again.
    fired_at = datetime(2026, 3, 30, 7, 0, 0, 350000, tzinfo=UTC)
    assert occurrence_at_or_before(cron, fired_at) == nxt
    # Standard cron weekdays: 0 and 7 are Sunday.
    sunday = cron_trigger("15 8 * * 0", "UTC").get_next_fire_time(None, datetime(2026, 3, 27, tzinfo=UTC))
    assert sunday is not None and sunday.date().isoformat() == "2026-03-29"
    assert (
        cron_trigger("15 8 * * 7", "UTC").get_next_fire_time(None, datetime(2026, 3, 27, tzinfo=UTC))
        == sunday
    )


async def test_scheduler_loads_enabled_schedule_triggers_and_follows_changes(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    trigger = await schedule_trigger(world, await world.robot(), cron="30 6 * * *", tz="America/New_York")
    ts = TriggerScheduler(ctx)
    ts.start()
    try:
        await ts.reload()
        job = ts.scheduler.get_job(str(trigger))
        assert job is not None
        assert (job.next_run_time.hour, job.next_run_time.minute) == (6, 30)
        assert str(job.next_run_time.tzinfo) == "America/New_York"
        await world.set(Trigger, trigger, enabled=False)
        await ts.reload()
        assert ts.scheduler.get_job(str(trigger)) is None
    finally:
        ts.shutdown()


async def test_invalid_cron_is_skipped_not_fatal(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    bad = await schedule_trigger(world, await world.robot(), cron="not a cron")
    ts = TriggerScheduler(ctx)
    ts.start()
    try:
        await ts.reload()
        assert ts.scheduler.get_job(str(bad)) is None
    finally:
        ts.shutdown()


async def test_job_rows_are_the_only_copy(ctx: ServiceContext) -> None:
    """A trigger fire with no current version is recorded (decided once) without a job."""
    world = await new_world(ctx)
    trigger = await schedule_trigger(world, await world.robot())
    from rpa_common.models import Process

    await world.set(Process, world.process_id, current_version_id=None)
    occurrence = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    assert await fire_trigger(ctx, trigger, occurrence) is None
    async with ctx.sessions() as session:
        n = await session.scalar(
            sa.select(sa.func.count()).select_from(TriggerFire).where(TriggerFire.trigger_id == trigger)
        )
        jobs = await session.scalar(
            sa.select(sa.func.count()).select_from(Job).where(Job.trigger_id == trigger)
        )
    assert (n, jobs) == (1, 0)
