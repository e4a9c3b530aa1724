"""The scheduler's loop: a NATS wake-up dispatches at once; session reports are stored."""

from __future__ import annotations

import asyncio
import time
import uuid

import sqlalchemy as sa

from rpa_common.models import Job, TerminalSession
from rpa_common.models.base import utcnow
from rpa_common.models.enums import JobState, RobotRole, RobotStatus, SessionState
from rpa_common.nats import subjects
from rpa_common.nats.messages import JobCreated, SessionStateReport
from rpa_common.service import ServiceContext
from rpa_scheduler.service import Scheduler
from tests.scheduler.factory import listen, new_world


def private_scheduler(ctx: ServiceContext) -> Scheduler:
    # Our own queue group: other schedulers on this shared NATS must not take our wake-ups.
    return Scheduler(ctx, triggers=False, sweeps=False, queue=f"test-{uuid.uuid4().hex[:8]}")


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
        for state, reason in ((SessionState.OPENING, None), (SessionState.FAILED, "logon refused")):
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
