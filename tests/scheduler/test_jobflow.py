"""``rpa_common.jobflow``: the one way to make a job, and where robot reports take a job."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.exc import IntegrityError

from rpa_common import jobflow
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Job
from rpa_common.models.enums import ActorType, JobPriority, JobSource, JobState
from rpa_common.service import ServiceContext
from tests.scheduler.factory import new_world

S = JobState


async def test_create_job_makes_a_pending_job_with_its_first_history_entry(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    actor = jobflow.Actor(ActorType.ROBOT, robot)

    async def work(session):  # type: ignore[no-untyped-def]
        return await jobflow.create_job(
            session,
            account_id=world.account_id,
            process_id=world.process_id,
            process_version_id=world.version_id,
            robot_id=robot,
            source=JobSource.ROBOT,
            priority=JobPriority.HIGH,
            input_args={"month": "2026-01"},
            idempotency_key="robot-request:1",
            actor=actor,
            reason="requested by the robot",
        )

    made = await run_in_transaction(ctx.sessions, work)
    job = await world.get(Job, made.id)
    assert (job.state, job.attempt, job.offers, job.priority, job.source) == (
        S.PENDING,
        0,
        0,
        JobPriority.HIGH,
        JobSource.ROBOT,
    )
    assert job.input_args == {"month": "2026-01"}
    [event] = await world.events(job.id)
    assert (event.from_state, event.to_state, event.actor_type, event.actor_id, event.reason) == (
        None,
        S.PENDING,
        ActorType.ROBOT,
        robot,
        "requested by the robot",
    )
    message = jobflow.created_message(made)
    assert (message.job_id, message.robot_id, message.robot_group_id) == (job.id, robot, None)

    # The same idempotency key again: the insert fails where it is made, and nothing is left.
    with pytest.raises(IntegrityError):
        await run_in_transaction(ctx.sessions, work, attempts=1)
    assert len(await world.jobs()) == 1


async def test_create_job_wants_exactly_one_robot_or_group(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    group = await world.group(robot)
    for target in ({}, {"robot_id": robot, "robot_group_id": group}):
        async with ctx.sessions() as session:
            with pytest.raises(ValueError, match="exactly one"):
                await jobflow.create_job(
                    session,
                    account_id=world.account_id,
                    process_id=world.process_id,
                    process_version_id=world.version_id,
                    source=JobSource.API,
                    actor=jobflow.Actor.system(),
                    reason=None,
                    job_id=uuid.uuid4(),
                    **target,  # type: ignore[arg-type]
                )


@pytest.mark.parametrize(
    ("status", "state", "steps"),
    [
        ("running", S.STARTING, [S.RUNNING]),
        ("running", S.RUNNING, []),  # a repeated report changes nothing
        ("running", S.STOPPING, []),
        ("progress", S.RUNNING, []),
        ("successful", S.RUNNING, [S.SUCCESSFUL]),
        ("successful", S.STARTING, [S.SUCCESSFUL]),
        ("failed", S.INTERRUPTING, [S.FAILED]),
        ("stopped", S.STOPPING, [S.STOPPED]),
        ("stopped", S.STARTING, [S.STOPPED]),
        ("stopped", S.RUNNING, [S.STOPPING, S.STOPPED]),  # stopped by itself: through Stopping
        ("interrupted", S.RUNNING, [S.INTERRUPTING, S.INTERRUPTED]),
        ("interrupted", S.STOPPING, [S.INTERRUPTING, S.INTERRUPTED]),
        ("interrupted", S.INTERRUPTING, [S.INTERRUPTED]),
        ("successful", S.SUCCESSFUL, []),  # already over
        ("failed", S.STOPPED, []),
    ],
)
def test_report_steps_follow_the_state_machine(status: str, state: JobState, steps: list[JobState]) -> None:
    assert jobflow.report_steps(status, state) == steps
    at = state
    for step in steps:
        assert step in jobflow.ALLOWED[at], f"{at} -> {step} is not allowed"
        at = step


def test_report_steps_refuse_what_is_not_a_report() -> None:
    with pytest.raises(ValueError):
        jobflow.report_steps("exploded", S.RUNNING)
