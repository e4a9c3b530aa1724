"""The scheduler's loop: a NATS wake-up dispatches at once; session reports are stored."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

import sqlalchemy as sa

from rpa_common.models import Job, TerminalSession
from rpa_common.models.base import utcnow
from rpa_common.models.enums import JobState, RobotRole, RobotStatus, SessionState
from rpa_common.nats import subjects
from rpa_common.nats.messages import JobCreated, JobStateChanged, SessionStateReport
from rpa_common.service import ServiceContext
from rpa_scheduler.service import Scheduler
from tests.scheduler.factory import listen, new_world


def private_scheduler(ctx: ServiceContext) -> Scheduler:
    # Our own queue group: other schedulers on this shared NATS must not take our wake-ups.
    # No relay nor webhook intake: these tests are about dispatch (tests/events covers the relay), and
    # the outbox that the earlier tests of the session filled would be relayed here first.
    return Scheduler(
        ctx, triggers=False, sweeps=False, relay=False, webhooks=False, queue=f"test-{uuid.uuid4().hex[:8]}"
    )


async def test_job_created_wakes_the_dispatcher_without_waiting_for_a_sweep(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    scheduler = private_scheduler(ctx)
    await scheduler.start()
    try:
        async with listen(ctx, subjects.gateway_inbox(world.gateway_id)) as inbox:
            await asyncio.sleep(0.2)  # the start-up pass is done
            job_id = await world.job(robot_id=robot)
            started = time.perf_counter()
            await ctx.publish(
                subjects.JOB_CREATED,
                JobCreated(
                    account_id=world.account_id, job_id=job_id, robot_id=robot, created_at=utcnow()
                ).encode(),
            )
            offer = await inbox.wait_for(lambda m: m["job_id"] == str(job_id), timeout=2)
            elapsed = time.perf_counter() - started
        assert offer["kind"] == "offer" and offer["robot_id"] == str(robot)
        assert elapsed < ctx.settings.sweep_interval_s / 2, f"offer took {elapsed:.3f}s"
        assert (await world.get(Job, job_id)).state == JobState.STARTING
    finally:
        await scheduler.stop()


async def test_session_reports_are_stored_and_a_failure_fails_the_job(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    coordinator = await world.robot(role=RobotRole.COORDINATOR)
    server = await world.terminal_server(coordinator)
    bot = await world.robot(role=RobotRole.UNATTENDED, status=RobotStatus.DISCONNECTED)
    await world.unattended_account(server, bot, "svc_report", "pw")
    scheduler = private_scheduler(ctx)
    await scheduler.start()
    try:
        async with listen(ctx, subjects.coordinator_inbox(coordinator)) as inbox:
            job_id = await world.job(robot_id=bot)
            scheduler.wake.set()
            opened = await inbox.wait_for(lambda m: m["job_id"] == str(job_id))
        session_id = uuid.UUID(opened["session_id"])
        for state, reason in ((SessionState.CONNECTING, None), (SessionState.FAILED, "logon refused")):
            await ctx.publish(
                subjects.SESSION_STATE,
                SessionStateReport(
                    session_id=session_id,
                    account_id=world.account_id,
                    state=state,
                    reason=reason,
                    at=utcnow(),
                ).encode(),
            )
        async with asyncio.timeout(5):
            while (await world.get(Job, job_id)).state != JobState.FAILED:
                await asyncio.sleep(0.05)
        async with ctx.sessions() as session:
            ts = await session.scalar(sa.select(TerminalSession).where(TerminalSession.id == session_id))
        assert ts is not None and (ts.state, ts.reason) == (SessionState.FAILED, "logon refused")
        assert (await world.get(Job, job_id)).error == "session failed: logon refused"
    finally:
        await scheduler.stop()


async def test_a_deadline_fires_within_a_second_of_its_time_not_at_the_next_sweep(
    ctx: ServiceContext,
) -> None:
    assert ctx.settings.sweep_interval_s >= 5, "the sweep alone would be seconds late"
    world = await new_world(ctx)
    robot = await world.robot()
    job_id = await world.job(robot_id=robot)
    scheduler = Scheduler(ctx, triggers=False, sweeps=True, queue=f"test-{uuid.uuid4().hex[:8]}")
    await scheduler.start()
    try:
        async with asyncio.timeout(5):
            while (await world.get(Job, job_id)).state != JobState.STARTING:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the timer has read the database: no deadline then
        # The gateway's "running" transition sets the deadlines and says so on JOB_STATE.
        stop_at = utcnow() + timedelta(seconds=1.5)
        await world.set(Job, job_id, state=JobState.RUNNING, started_at=utcnow(), stop_at=stop_at)
        job = await world.get(Job, job_id)
        await ctx.publish(
            subjects.JOB_STATE,
            JobStateChanged(
                account_id=world.account_id,
                job_id=job_id,
                process_id=job.process_id,
                robot_id=robot,
                from_state=JobState.STARTING,
                to_state=JobState.RUNNING,
                attempt=1,
                at=utcnow(),
                deadline_at=stop_at,
            ).encode(),
        )
        async with asyncio.timeout(5):
            while (await world.get(Job, job_id)).state != JobState.STOPPING:
                await asyncio.sleep(0.02)
        fired = (await world.events(job_id))[-1]
        assert fired.reason == "stop deadline passed"
        late = (fired.at - stop_at).total_seconds()
        assert 0 <= late < 1.0, f"fired {late:.3f} s after the deadline"
    finally:
        await scheduler.stop()


async def test_a_deadline_already_in_the_database_fires_on_time_without_a_message(
    ctx: ServiceContext,
) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    job_id = await world.job(robot_id=robot)
    stop_at = utcnow() + timedelta(seconds=1.5)
    await world.set(Job, job_id, state=JobState.RUNNING, robot_id=robot, attempt=1, stop_at=stop_at)
    scheduler = Scheduler(ctx, triggers=False, sweeps=True, queue=f"test-{uuid.uuid4().hex[:8]}")
    await scheduler.start()
    try:
        async with asyncio.timeout(5):
            while (await world.get(Job, job_id)).state != JobState.STOPPING:
                await asyncio.sleep(0.02)
        late = ((await world.events(job_id))[-1].at - stop_at).total_seconds()
        assert 0 <= late < 1.0, f"fired {late:.3f} s after the deadline"
    finally:
        await scheduler.stop()


async def test_a_stopped_scheduler_lets_its_nats_connection_drain_at_once(ctx: ServiceContext) -> None:
    """Every background part on (relay, webhook intake, triggers, sweeps): after ``stop()`` nothing
    of the scheduler's holds the connection open, so a service shuts down in moments, not after
    NATS's drain timeout."""
    from rpa_common.nats.client import connect

    nc = await connect(ctx.settings.nats_url, "rpa-scheduler-drain-test")
    own = ServiceContext(
        name="scheduler", settings=ctx.settings, engine=ctx.engine, sessions=ctx.sessions, nc=nc
    )
    scheduler = Scheduler(own, queue=f"test-{uuid.uuid4().hex[:8]}")
    await scheduler.start()
    await asyncio.sleep(1.5)  # the webhook intake is waiting in a fetch, the relay on its wake-up
    started = time.perf_counter()
    await scheduler.stop()
    await nc.drain()
    elapsed = time.perf_counter() - started
    assert elapsed < 3, f"stop and drain took {elapsed:.1f} s"
