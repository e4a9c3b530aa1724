"""Task sweeps and the job's end: expired locks, postponed tasks, abandon timeouts, queue flags."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from rpa_common.jobflow import Actor as JobActor
from rpa_common.jobflow import transition
from rpa_common.models import Job, Task
from rpa_common.models.base import utcnow
from rpa_common.models.enums import JobState, TaskEventKind, TaskState
from rpa_common.service import ServiceContext
from rpa_common.taskflow import TaskError, TaskInput
from rpa_scheduler.sweeps import sweep_all
from rpa_scheduler.task_sweeps import sweep_abandoned, sweep_postponed, sweep_task_locks
from tests.scheduler.factory import World, ago, new_world
from tests.test_taskflow import add, finish, history, make_queue, state_of, take, tx

S = TaskState


@pytest.fixture
async def world(ctx: ServiceContext) -> World:
    return await new_world(ctx)


async def test_expired_lock_gives_the_task_back_and_the_late_finish_is_refused(world: World) -> None:
    queue = await make_queue(world)
    late, other = await world.robot(), await world.robot()
    [added] = await add(world, queue, TaskInput(name="t"))
    held = await take(world, queue, late, lock_s=60)
    assert held is not None
    assert await sweep_task_locks(world.ctx) == 0  # not expired yet: left alone
    await world.set(Task, added.id, lock_expires_at=ago(1))
    assert await sweep_task_locks(world.ctx) >= 1
    back = await state_of(world, added.id)
    assert back.state == S.CREATED and back.lock_expires_at is None and back.lock_token == 1
    events = await history(world, added.id)
    assert (events[-1].from_state, events[-1].to_state, events[-1].note) == (
        S.IN_PROGRESS,
        S.CREATED,
        "lock expired",
    )
    again = await take(world, queue, other)
    assert again is not None and again.id == added.id and again.lock_token == 2
    with pytest.raises(TaskError) as err:
        await finish(world, held, late, S.SUCCESSFUL)
    assert err.value.code == "stale_token"
    assert await finish(world, again, other, S.SUCCESSFUL) is None


async def test_postponed_become_created_when_due(world: World) -> None:
    queue = await make_queue(world)
    [due] = await add(world, queue, TaskInput(name="due", delay_until=utcnow() + timedelta(hours=1)))
    [later] = await add(world, queue, TaskInput(name="later", delay_until=utcnow() + timedelta(hours=1)))
    await world.set(Task, due.id, delay_until=ago(1))
    assert await sweep_postponed(world.ctx) >= 1
    assert (await state_of(world, due.id)).state == S.CREATED
    assert (await state_of(world, later.id)).state == S.POSTPONED


async def test_abandon_timeouts_and_retry_of_abandoned(world: World) -> None:
    queue = await make_queue(
        world, created_abandon_s=60, in_progress_abandon_s=120, retry_abandoned=True, max_retries=1
    )
    untouched = await make_queue(world)  # no timeouts: never abandoned
    robot = await world.robot()
    # "working": taken long ago, its lock still valid (renewed), but past the In Progress timeout.
    [working] = await add(world, queue, TaskInput(name="working"))
    taken = await take(world, queue, robot, lock_s=3600)
    assert taken is not None and taken.id == working.id
    [waiting] = await add(world, queue, TaskInput(name="waiting"))
    [fresh] = await add(world, queue, TaskInput(name="fresh"))
    [old_elsewhere] = await add(world, untouched, TaskInput(name="old"))
    await world.set(Task, waiting.id, created_at=ago(61))
    await world.set(Task, old_elsewhere.id, created_at=ago(10_000))
    await world.set(Task, working.id, started_at=ago(121))
    assert await sweep_abandoned(world.ctx) >= 2
    assert (await state_of(world, waiting.id)).state == S.ABANDONED
    assert (await state_of(world, working.id)).state == S.ABANDONED
    assert (await state_of(world, fresh.id)).state == S.CREATED
    assert (await state_of(world, old_elsewhere.id)).state == S.CREATED
    # Abandoned tasks are retried once (max_retries=1), linked to what they retry.
    kinds = [e.kind for e in await history(world, waiting.id)]
    assert kinds[-1] == TaskEventKind.RETRIED
    with pytest.raises(TaskError) as err:  # the holder of the abandoned task is refused
        await finish(world, taken, robot, S.SUCCESSFUL)
    assert err.value.code == "not_in_progress"


@pytest.mark.parametrize(
    ("job_end", "flag"),
    [
        (JobState.FAILED, "fail_on_job_failed"),
        (JobState.STOPPED, "fail_on_job_stopped"),
        (JobState.INTERRUPTED, "fail_on_job_interrupted"),
    ],
)
async def test_job_end_fails_its_tasks_per_queue_flag(world: World, job_end: JobState, flag: str) -> None:
    failing = await make_queue(world, **{flag: True}, retry_failed_application=True, max_retries=1)
    keeping = await make_queue(world, **{flag: False})
    robot = await world.robot()
    job_id = await world.job(robot_id=robot)
    before = {JobState.STOPPED: JobState.STOPPING, JobState.INTERRUPTED: JobState.INTERRUPTING}
    await world.set(Job, job_id, state=before.get(job_end, JobState.RUNNING))
    await add(world, failing, TaskInput(name="a"))
    await add(world, keeping, TaskInput(name="b"))

    async def take_for_job(queue: object) -> Task:
        from rpa_common import taskflow

        task = await tx(
            world.ctx,
            lambda s: taskflow.take_next(
                s,
                account_id=world.account_id,
                queue=queue,
                robot_id=robot,
                job_id=job_id,  # type: ignore[arg-type]
            ),
        )
        assert task is not None
        return task  # type: ignore[no-any-return]

    a, b = await take_for_job(failing), await take_for_job(keeping)
    job = await world.get(Job, job_id)
    t = await tx(
        world.ctx,
        lambda s: transition(
            s, job_id, job_end, expected=[job.state], actor=JobActor.system(), reason="test"
        ),
    )
    assert t is not None
    ended = await state_of(world, a.id)
    assert ended.state == S.FAILED_APPLICATION and ended.error == f"its job ended {job_end.value}"
    assert (await state_of(world, b.id)).state == S.IN_PROGRESS  # flag off: the lock runs out instead
    retries = [e for e in await history(world, a.id) if e.kind == TaskEventKind.RETRIED]
    assert len(retries) == 1 and retries[0].related_task_id is not None
    assert (await state_of(world, retries[0].related_task_id)).state == S.CREATED


async def test_successful_job_leaves_its_tasks(world: World) -> None:
    queue = await make_queue(world, fail_on_job_failed=True)
    robot = await world.robot()
    job_id = await world.job(robot_id=robot)
    await world.set(Job, job_id, state=JobState.RUNNING)
    await add(world, queue, TaskInput(name="a"))
    from rpa_common import taskflow

    task = await tx(
        world.ctx,
        lambda s: taskflow.take_next(
            s, account_id=world.account_id, queue=queue, robot_id=robot, job_id=job_id
        ),
    )
    await tx(
        world.ctx,
        lambda s: transition(
            s, job_id, JobState.SUCCESSFUL, expected=[JobState.RUNNING], actor=JobActor.system()
        ),
    )
    assert (await state_of(world, task.id)).state == S.IN_PROGRESS


async def test_two_replicas_sweep_each_task_once(world: World) -> None:
    queue = await make_queue(world)
    robot = await world.robot()
    ids = [t.id for t in await add(world, queue, *(TaskInput(name=f"t{i}") for i in range(30)))]
    for _ in ids:
        assert await take(world, queue, robot) is not None
    for task_id in ids:
        await world.set(Task, task_id, lock_expires_at=ago(5))
    counts = await asyncio.gather(sweep_task_locks(world.ctx, limit=7), sweep_task_locks(world.ctx, limit=7))
    await sweep_all(world.ctx)
    assert sum(counts) <= 14
    for task_id in ids:
        events = [
            e
            for e in await history(world, task_id)
            if e.to_state == S.CREATED and e.from_state == S.IN_PROGRESS
        ]
        assert len(events) == 1, task_id
        assert (await state_of(world, task_id)).state == S.CREATED


async def test_unknown_ids_are_ignored(world: World) -> None:
    # A job that holds no task ends without touching any.
    robot = await world.robot()
    job_id = await world.job(robot_id=robot)
    await world.set(Job, job_id, state=JobState.RUNNING)
    t = await tx(
        world.ctx,
        lambda s: transition(
            s, job_id, JobState.FAILED, expected=[JobState.RUNNING], actor=JobActor.system()
        ),
    )
    assert t is not None and t.to_state == JobState.FAILED
    assert uuid.UUID(int=0) != job_id
