"""Sweeps: what happens because time passed: lost robots, expired leases, deadlines, sessions."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from rpa_common.models import Job, Robot, TerminalSession
from rpa_common.models.base import utcnow
from rpa_common.models.enums import JobState, RobotRole, RobotStatus, SessionState
from rpa_common.nats import subjects
from rpa_common.nats.messages import SessionStateReport
from rpa_common.service import ServiceContext
from rpa_scheduler.dispatch import dispatch_pass
from rpa_scheduler.sweeps import (
    apply_session_report,
    sweep_deadlines,
    sweep_heartbeats,
    sweep_leases,
    sweep_sessions,
)
from tests.scheduler.factory import World, ago, listen, new_world


async def running_job(world: World, robot: uuid.UUID, **values: object) -> Job:
    """A job that went Starting through dispatch, then Running as the gateway would make it."""
    job_id = await world.job(robot_id=robot, **values)  # type: ignore[arg-type]
    await dispatch_pass(world.ctx)
    job = await world.get(Job, job_id)
    assert job.state == JobState.STARTING
    await world.set(Job, job_id, state=JobState.RUNNING, started_at=utcnow())
    return await world.get(Job, job_id)


async def test_silent_robots_become_disconnected(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    silent = await world.robot()
    alive = await world.robot()
    limit = ctx.settings.heartbeat_interval_s * ctx.settings.heartbeat_misses
    await world.set(Robot, silent, last_heartbeat_at=ago(limit + 5))
    await world.set(Robot, alive, last_heartbeat_at=ago(limit - 5))
    async with listen(ctx, subjects.ROBOT_STATUS) as inbox:
        await sweep_heartbeats(ctx)
        msg = await inbox.wait_for(lambda m: m["robot_id"] == str(silent))
    assert msg["status"] == "Disconnected"
    robot = await world.get(Robot, silent)
    assert robot.status == RobotStatus.DISCONNECTED and robot.gateway_id is None
    assert (await world.get(Robot, alive)).status == RobotStatus.READY


async def test_expired_lease_fails_the_job_robot_lost_and_frees_the_robot(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    job = await running_job(world, robot)
    await world.set(Job, job.id, lease_expires_at=ago(1))
    async with listen(ctx, subjects.JOB_STATE) as inbox:
        await sweep_leases(ctx)
        await inbox.wait_for(lambda m: m["job_id"] == str(job.id) and m["to_state"] == "Failed")
    ended = await world.get(Job, job.id)
    assert (ended.state, ended.error, ended.lease_expires_at) == (JobState.FAILED, "robot lost", None)
    assert ended.ended_at is not None
    assert (await world.events(job.id))[-1].reason == "robot lost"
    assert (await world.get(Robot, robot)).current_job_id is None


async def test_expired_lease_retries_while_retries_remain(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    job = await running_job(world, robot, max_retries=1)
    await world.set(Job, job.id, lease_expires_at=ago(1))
    await sweep_leases(ctx)
    again = await world.get(Job, job.id)
    assert again.state == JobState.PENDING and again.attempt == 1
    assert (await world.events(job.id))[-1].reason == "robot lost, retrying"
    # The second attempt is dispatched; when it is lost too, no retry is left.
    await dispatch_pass(ctx)
    assert (await world.get(Job, job.id)).attempt == 2
    await world.set(Job, job.id, lease_expires_at=ago(1))
    await sweep_leases(ctx)
    assert (await world.get(Job, job.id)).state == JobState.FAILED


async def test_deadlines_stop_then_interrupt_an_unreachable_robots_job(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    job = await running_job(world, robot)
    later = utcnow().replace(year=utcnow().year + 1)
    await world.set(Job, job.id, stop_at=ago(1), interrupt_at=later, lease_expires_at=later)
    async with listen(ctx, subjects.JOB_CONTROL) as inbox:
        await sweep_deadlines(ctx)
        stop = await inbox.wait_for(lambda m: m["job_id"] == str(job.id))
        assert (stop["command"], stop["attempt"], stop["robot_id"]) == ("stop", 1, str(robot))
        assert (await world.get(Job, job.id)).state == JobState.STOPPING

        # The robot never answers: the interrupt deadline passes, then its lease.
        await world.set(Job, job.id, interrupt_at=ago(1))
        await sweep_deadlines(ctx)
        await inbox.wait_for(lambda m: m["job_id"] == str(job.id) and m["command"] == "interrupt")
    assert (await world.get(Job, job.id)).state == JobState.INTERRUPTING
    await world.set(Job, job.id, lease_expires_at=ago(1))
    await sweep_leases(ctx)
    ended = await world.get(Job, job.id)
    assert ended.state == JobState.INTERRUPTED
    assert [e.to_state for e in await world.events(job.id)] == [
        JobState.PENDING,
        JobState.STARTING,
        JobState.STOPPING,
        JobState.INTERRUPTING,
        JobState.INTERRUPTED,
    ]
    assert (await world.get(Robot, robot)).current_job_id is None


async def test_interrupt_deadline_alone_interrupts(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    job = await running_job(world, robot)
    await world.set(Job, job.id, interrupt_at=ago(1))
    await sweep_deadlines(ctx)
    assert (await world.get(Job, job.id)).state == JobState.INTERRUPTING


async def session_job(world: World, max_retries: int = 0) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    coordinator = await world.robot(role=RobotRole.COORDINATOR)
    server = await world.terminal_server(coordinator)
    bot = await world.robot(role=RobotRole.UNATTENDED, status=RobotStatus.DISCONNECTED)
    await world.unattended_account(server, bot, f"svc_{bot.hex[:6]}", "pw")
    job_id = await world.job(robot_id=bot, max_retries=max_retries)
    await dispatch_pass(world.ctx)
    async with world.ctx.sessions() as session:
        session_id = await session.scalar(
            sa.select(TerminalSession.id).where(TerminalSession.job_id == job_id)
        )
    assert session_id is not None
    return coordinator, job_id, session_id


async def test_failed_session_report_fails_the_starting_job(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    _, job_id, session_id = await session_job(world)

    def report(state: SessionState, reason: str | None = None) -> SessionStateReport:
        return SessionStateReport(
            session_id=session_id, account_id=world.account_id, state=state, reason=reason, at=utcnow()
        )

    assert await apply_session_report(ctx, report(SessionState.CONNECTING))
    assert await apply_session_report(ctx, report(SessionState.FAILED, "spawn failed: no such user"))
    # A late report never moves a session backwards.
    assert not await apply_session_report(ctx, report(SessionState.LOGGED_ON))
    ts = await world.get(TerminalSession, session_id)
    assert (ts.state, ts.reason) == (SessionState.FAILED, "spawn failed: no such user")
    job = await world.get(Job, job_id)
    assert job.state == JobState.FAILED and job.error == "session failed: spawn failed: no such user"


async def test_a_failed_session_retries_the_job_when_its_policy_allows(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    _, job_id, session_id = await session_job(world, max_retries=1)
    reason = "not logged on within 30 s: wrong password, or the server did not start the robot"
    failed = SessionStateReport(
        session_id=session_id,
        account_id=world.account_id,
        state=SessionState.FAILED,
        reason=reason,
        at=utcnow(),
    )
    assert await apply_session_report(ctx, failed)
    job = await world.get(Job, job_id)
    # Attempt 1 of 2 failed with the session: the same job is planned again, its robot released.
    assert (job.state, job.attempt, job.error) == (JobState.PENDING, 1, None)
    assert (await world.events(job_id))[-1].reason == f"session failed: {reason}, retrying"
    assert (await world.get(Robot, job.robot_id)).current_job_id is None
    # The second attempt opens a new session; when that one fails too, the job fails.
    await dispatch_pass(ctx)
    async with ctx.sessions() as session:
        second = await session.scalar(
            sa.select(TerminalSession.id).where(
                TerminalSession.job_id == job_id, TerminalSession.id != session_id
            )
        )
    assert second is not None and (await world.get(Job, job_id)).attempt == 2
    assert await apply_session_report(ctx, failed.model_copy(update={"session_id": second}))
    job = await world.get(Job, job_id)
    assert (job.state, job.error) == (JobState.FAILED, f"session failed: {reason}")


async def test_a_server_without_a_coordinator_public_key_fails_the_job_at_once(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    coordinator = await world.robot(role=RobotRole.COORDINATOR)
    server = await world.terminal_server(coordinator, sealed=False)
    bot = await world.robot(role=RobotRole.UNATTENDED, status=RobotStatus.DISCONNECTED)
    await world.unattended_account(server, bot, "svc_nokey", "s3cret")
    job_id = await world.job(robot_id=bot)
    async with listen(ctx, subjects.coordinator_inbox(coordinator)) as inbox:
        await dispatch_pass(ctx)
        # Never a password in clear: no OpenSession at all.
        assert await inbox.quiet(0.3, lambda m: True)
    job = await world.get(Job, job_id)
    assert job.state == JobState.FAILED and job.error is not None and "no coordinator public key" in job.error
    assert (await world.get(Robot, bot)).current_job_id is None


async def test_robot_that_does_not_connect_in_time_fails_its_job_and_closes_the_session(
    ctx: ServiceContext,
) -> None:
    world = await new_world(ctx)
    coordinator, job_id, session_id = await session_job(world)
    await world.set(TerminalSession, session_id, state=SessionState.LOGGED_ON)
    await sweep_sessions(ctx)
    assert (await world.get(Job, job_id)).state == JobState.STARTING, "not timed out yet"
    await world.set(TerminalSession, session_id, created_at=ago(ctx.settings.session_connect_timeout_s + 1))
    async with listen(ctx, subjects.coordinator_inbox(coordinator)) as inbox:
        await sweep_sessions(ctx)
        close = await inbox.wait_for(lambda m: m["session_id"] == str(session_id))
    timeout = f"robot did not connect within {ctx.settings.session_connect_timeout_s:g} s"
    assert close["reason"] == timeout
    job = await world.get(Job, job_id)
    assert (job.state, job.error) == (JobState.FAILED, timeout)
    ts = await world.get(TerminalSession, session_id)
    assert ts.state == SessionState.FAILED and ts.closed_at is not None
    # The seat is free again and the robot too.
    assert (await world.get(Robot, job.robot_id)).current_job_id is None


async def test_past_both_deadlines_the_robot_gets_stop_before_interrupt(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    job = await running_job(world, robot)
    await world.set(Job, job.id, stop_at=ago(3), interrupt_at=ago(2))
    async with listen(ctx, subjects.JOB_CONTROL) as inbox:
        await sweep_deadlines(ctx)
        await inbox.wait_for(lambda m: m["job_id"] == str(job.id) and m["command"] == "interrupt")
        commands = [m["command"] for m in inbox.messages if m["job_id"] == str(job.id)]
    assert commands == ["stop", "interrupt"]
    assert [(e.from_state, e.to_state, e.reason) for e in await world.events(job.id)][-2:] == [
        (JobState.RUNNING, JobState.STOPPING, "stop deadline passed"),
        (JobState.STOPPING, JobState.INTERRUPTING, "interrupt deadline passed"),
    ]
