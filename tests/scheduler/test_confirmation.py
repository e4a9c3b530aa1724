"""Starting jobs nobody confirmed: offered again, then planned again (issue #6, "dispatch that heals").

An offer (gateway path) or an ``OpenSession`` (session path) published into a NATS outage is lost,
and the robot's heartbeats keep the job's lease alive. ``sweep_unconfirmed`` sends it again after
``dispatch_confirm_timeout_s`` and, after ``dispatch_max_offers``, puts the job back to Pending with
its robot released. Every step is guarded by state and attempt.
"""

from __future__ import annotations

import uuid

from rpa_common.models import Job, Robot, TerminalSession
from rpa_common.models.base import utcnow
from rpa_common.models.enums import JobState, RobotRole, RobotStatus, SessionState
from rpa_common.nats import subjects
from rpa_common.nats.messages import SessionStateReport
from rpa_common.service import ServiceContext
from rpa_scheduler.dispatch import dispatch_pass
from rpa_scheduler.sweeps import apply_session_report, sweep_unconfirmed
from tests.scheduler.factory import World, ago, listen, new_world


def overdue(ctx: ServiceContext) -> float:
    return ctx.settings.dispatch_confirm_timeout_s + 1


async def starting_job(world: World, robot: uuid.UUID) -> uuid.UUID:
    job_id = await world.job(robot_id=robot)
    await dispatch_pass(world.ctx)
    job = await world.get(Job, job_id)
    assert (job.state, job.offers, job.attempt) == (JobState.STARTING, 1, 1)
    assert job.offered_at is not None
    return job_id


async def test_an_unconfirmed_offer_is_sent_again_with_the_same_attempt(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    job_id = await starting_job(world, robot)
    await sweep_unconfirmed(ctx)
    assert (await world.get(Job, job_id)).offers == 1, "not overdue yet: nothing sent"

    await world.set(Job, job_id, offered_at=ago(overdue(ctx)))
    async with listen(ctx, subjects.gateway_inbox(world.gateway_id)) as inbox:
        await sweep_unconfirmed(ctx)
        again = await inbox.wait_for(lambda m: m["job_id"] == str(job_id))
    assert (again["kind"], again["robot_id"], again["attempt"]) == ("offer", str(robot), 1)
    assert again["offer"]["job_id"] == str(job_id) and again["offer"]["attempt"] == 1
    job = await world.get(Job, job_id)
    assert (job.state, job.attempt, job.offers) == (JobState.STARTING, 1, 2)
    assert (await world.get(Robot, robot)).current_job_id == job_id


async def test_a_confirmed_job_is_left_alone(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    job_id = await starting_job(world, robot)
    # The robot reported running: the job left Starting.
    await world.set(Job, job_id, state=JobState.RUNNING, offered_at=ago(overdue(ctx)))
    async with listen(ctx, subjects.gateway_inbox(world.gateway_id)) as inbox:
        await sweep_unconfirmed(ctx)
        assert await inbox.quiet(0.3, lambda m: m["job_id"] == str(job_id))
    assert (await world.get(Job, job_id)).offers == 1


async def test_after_the_last_offer_the_job_is_planned_again_and_its_robot_released(
    ctx: ServiceContext,
) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    job_id = await starting_job(world, robot)
    await world.set(Job, job_id, offers=ctx.settings.dispatch_max_offers, offered_at=ago(overdue(ctx)))
    async with listen(ctx, subjects.JOB_CREATED) as created:
        await sweep_unconfirmed(ctx)
        await created.wait_for(lambda m: m["job_id"] == str(job_id))  # the dispatcher wakes up
    job = await world.get(Job, job_id)
    assert (job.state, job.attempt, job.offers, job.offered_at) == (JobState.PENDING, 1, 0, None)
    assert job.lease_expires_at is None
    events = await world.events(job_id)
    assert (events[-1].from_state, events[-1].to_state) == (JobState.STARTING, JobState.PENDING)
    assert events[-1].reason == f"not confirmed after {ctx.settings.dispatch_max_offers} offers"
    assert (await world.get(Robot, robot)).current_job_id is None
    # Planned again: the next pass gives it a new attempt, and a sweep that raced it changes nothing.
    await dispatch_pass(ctx)
    job = await world.get(Job, job_id)
    assert (job.state, job.attempt, job.offers) == (JobState.STARTING, 2, 1)
    await sweep_unconfirmed(ctx)
    assert (await world.get(Job, job_id)).offers == 1


async def test_a_group_job_planned_again_may_go_to_another_member(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    first = await world.robot()
    group = await world.group(first)
    job_id = await world.job(group_id=group)
    await dispatch_pass(ctx)
    assert (await world.get(Job, job_id)).robot_id == first
    await world.set(Job, job_id, offers=ctx.settings.dispatch_max_offers, offered_at=ago(overdue(ctx)))
    await sweep_unconfirmed(ctx)
    job = await world.get(Job, job_id)
    assert (job.state, job.robot_id, job.robot_group_id) == (JobState.PENDING, None, group)


async def session_starting_job(world: World) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, dict[str, object]]:
    coordinator = await world.robot(role=RobotRole.COORDINATOR)
    server = await world.terminal_server(coordinator)
    bot = await world.robot(role=RobotRole.UNATTENDED, status=RobotStatus.DISCONNECTED)
    await world.unattended_account(server, bot, f"svc_{bot.hex[:6]}", "s3cret-pw")
    job_id = await world.job(robot_id=bot)
    async with listen(world.ctx, subjects.coordinator_inbox(coordinator)) as inbox:
        await dispatch_pass(world.ctx)
        first = await inbox.wait_for(lambda m: m["job_id"] == str(job_id))
    return coordinator, job_id, uuid.UUID(first["session_id"]), first


async def test_an_unanswered_open_session_is_sent_again_with_the_same_key(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    coordinator, job_id, session_id, first = await session_starting_job(world)
    assert first["kind"] == "open_session" and world.opened(first)["robot_key"]
    await world.set(Job, job_id, offered_at=ago(overdue(ctx)))
    async with listen(ctx, subjects.coordinator_inbox(coordinator)) as inbox:
        await sweep_unconfirmed(ctx)
        again = await inbox.wait_for(lambda m: m["session_id"] == str(session_id))
    # The same command: a coordinator that got the first one and started the robot with its key
    # answers with its state, and the key it gave the robot still works.
    # (A new box each time: a fresh ephemeral key; its content is the same.)
    assert {**again, "sealed": None} == {**first, "sealed": None}
    assert world.opened(again) == world.opened(first)
    assert (await world.get(Job, job_id)).offers == 2

    # The coordinator answers: no more OpenSession, and the key no longer waits at rest.
    assert await apply_session_report(ctx, _report(world, session_id, SessionState.CONNECTING))
    assert (await world.get(TerminalSession, session_id)).robot_key_encrypted is None
    await world.set(Job, job_id, offered_at=ago(overdue(ctx)))
    async with listen(ctx, subjects.coordinator_inbox(coordinator)) as inbox:
        await sweep_unconfirmed(ctx)
        assert await inbox.quiet(0.3, lambda m: m["session_id"] == str(session_id))
    job = await world.get(Job, job_id)
    assert (job.state, job.offers) == (JobState.STARTING, 2)


async def test_an_open_session_never_answered_is_given_up_and_the_job_planned_again(
    ctx: ServiceContext,
) -> None:
    world = await new_world(ctx)
    coordinator, job_id, session_id, _ = await session_starting_job(world)
    await world.set(Job, job_id, offers=ctx.settings.dispatch_max_offers, offered_at=ago(overdue(ctx)))
    async with listen(ctx, subjects.coordinator_inbox(coordinator)) as inbox:
        await sweep_unconfirmed(ctx)
        close = await inbox.wait_for(lambda m: m["session_id"] == str(session_id))
    assert close["kind"] == "close_session"
    ts = await world.get(TerminalSession, session_id)
    assert ts.state == SessionState.FAILED and ts.robot_key_encrypted is None
    job = await world.get(Job, job_id)
    assert (job.state, job.attempt) == (JobState.PENDING, 1)
    assert (await world.get(Robot, job.robot_id)).current_job_id is None


def _report(world: World, session_id: uuid.UUID, state: SessionState) -> SessionStateReport:
    return SessionStateReport(session_id=session_id, account_id=world.account_id, state=state, at=utcnow())
