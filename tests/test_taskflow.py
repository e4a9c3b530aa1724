"""The task state machine of ``rpa_common.taskflow``, on both databases: add, take, renew, progress,
finish, retries, fencing tokens, ordering and concurrent takers."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from rpa_common import taskflow
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Queue, Task, TaskEvent
from rpa_common.models.base import utcnow
from rpa_common.models.enums import TaskEventKind, TaskPriority, TaskState
from rpa_common.service import ServiceContext
from rpa_common.taskflow import TaskError, TaskInput
from tests.scheduler.factory import World, new_world

S = TaskState


async def make_queue(world: World, **values: Any) -> Queue:
    queue = Queue(id=uuid.uuid4(), account_id=world.account_id, name=f"q-{uuid.uuid4().hex[:10]}", **values)

    async def work(session: Any) -> None:
        session.add(queue)

    await run_in_transaction(world.ctx.sessions, work)
    return queue


async def tx(ctx: ServiceContext, fn: Any) -> Any:
    return await run_in_transaction(ctx.sessions, fn)


async def add(world: World, queue: Queue, *items: TaskInput, **kw: Any) -> list[Task]:
    return await tx(  # type: ignore[no-any-return]
        world.ctx,
        lambda s: taskflow.add_tasks(s, account_id=world.account_id, queue=queue, items=items, **kw),
    )


async def take(world: World, queue: Queue, robot_id: uuid.UUID, **kw: Any) -> Task | None:
    return await tx(  # type: ignore[no-any-return]
        world.ctx,
        lambda s: taskflow.take_next(
            s, account_id=world.account_id, queue=queue, robot_id=robot_id, job_id=None, **kw
        ),
    )


async def finish(world: World, task: Task, robot_id: uuid.UUID, outcome: TaskState, **kw: Any) -> Task | None:
    token = kw.pop("token", task.lock_token)
    return await tx(  # type: ignore[no-any-return]
        world.ctx,
        lambda s: taskflow.finish(
            s,
            account_id=world.account_id,
            task_id=task.id,
            token=token,
            robot_id=robot_id,
            outcome=outcome,
            **kw,
        ),
    )


async def state_of(world: World, task_id: uuid.UUID) -> Task:
    return await world.get(Task, task_id)  # type: ignore[no-any-return]


async def history(world: World, task_id: uuid.UUID) -> list[TaskEvent]:
    async with world.ctx.sessions() as session:
        rows = await session.execute(
            sa.select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.at, TaskEvent.kind)
        )
        return list(rows.scalars())


@pytest.fixture
async def world(ctx: ServiceContext) -> World:
    return await new_world(ctx)


async def test_lifecycle_take_renew_progress_finish(world: World) -> None:
    queue = await make_queue(world)
    robot = await world.robot()
    [added] = await add(world, queue, TaskInput(name="inv-1", parameters={"n": 1}, tags=["a", "a", "b"]))
    assert added.state == S.CREATED and added.tags == ["a", "b"]
    task = await take(world, queue, robot, lock_s=30)
    assert task is not None and task.id == added.id
    assert task.state == S.IN_PROGRESS and task.lock_token == 1 and task.lock_robot_id == robot
    assert task.lock_expires_at is not None and task.lock_expires_at > utcnow() + timedelta(seconds=25)
    assert await take(world, queue, robot) is None  # nothing else is free

    expires = await tx(
        world.ctx,
        lambda s: taskflow.renew_lock(
            s, account_id=world.account_id, task_id=task.id, token=1, robot_id=robot, lock_s=600
        ),
    )
    assert expires > utcnow() + timedelta(seconds=590)
    await tx(
        world.ctx,
        lambda s: taskflow.progress(
            s, account_id=world.account_id, task_id=task.id, token=1, robot_id=robot, note="half way"
        ),
    )
    retry = await finish(world, task, robot, S.SUCCESSFUL, output={"total": 3})
    assert retry is None
    stored = await state_of(world, task.id)
    assert stored.state == S.SUCCESSFUL and stored.output == {"total": 3} and stored.progress == "half way"
    assert stored.ended_at is not None and stored.lock_expires_at is None
    kinds = [(e.kind, e.from_state, e.to_state) for e in await history(world, task.id)]
    assert kinds == [
        (TaskEventKind.CREATED, None, S.CREATED),
        (TaskEventKind.STATE, S.CREATED, S.IN_PROGRESS),
        (TaskEventKind.PROGRESS, None, None),
        (TaskEventKind.STATE, S.IN_PROGRESS, S.SUCCESSFUL),
    ]
    # The journal's replay of the same finish changes nothing and is not refused.
    assert await finish(world, task, robot, S.SUCCESSFUL) is None
    # A different outcome on a finished task is.
    with pytest.raises(TaskError) as err:
        await finish(world, task, robot, S.FAILED_BUSINESS)
    assert err.value.code == "not_in_progress" and err.value.status == 409


async def test_take_order_overdue_then_priority_then_age(world: World) -> None:
    queue = await make_queue(world)
    robot = await world.robot()
    now = utcnow()
    low_old = await add(world, queue, TaskInput(name="low-old", priority=TaskPriority.LOW))
    normal_old = await add(world, queue, TaskInput(name="normal-old"))
    high_new = await add(world, queue, TaskInput(name="high-new", priority=TaskPriority.HIGH))
    normal_new = await add(world, queue, TaskInput(name="normal-new"))
    later_deadline = await add(
        world,
        queue,
        TaskInput(name="future-deadline", priority=TaskPriority.LOW, deadline=now + timedelta(days=1)),
    )
    overdue_low = await add(
        world,
        queue,
        TaskInput(name="overdue-low", priority=TaskPriority.LOW, deadline=now - timedelta(minutes=1)),
    )
    overdue_high = await add(
        world,
        queue,
        TaskInput(name="overdue-high", priority=TaskPriority.HIGH, deadline=now - timedelta(seconds=1)),
    )
    taken = []
    while (task := await take(world, queue, robot)) is not None:
        taken.append(task.name)
    assert taken == [
        overdue_high[0].name,
        overdue_low[0].name,
        high_new[0].name,
        normal_old[0].name,
        normal_new[0].name,
        low_old[0].name,
        later_deadline[0].name,
    ]


async def test_stale_token_after_lock_expiry_and_retake(world: World) -> None:
    queue = await make_queue(world)
    first, second = await world.robot(), await world.robot()
    await add(world, queue, TaskInput(name="t"))
    task = await take(world, queue, first, lock_s=1)
    assert task is not None and task.lock_token == 1
    # The lock runs out: renew, progress and finish by the late holder are refused.
    await world.set(Task, task.id, lock_expires_at=utcnow() - timedelta(seconds=1))
    with pytest.raises(TaskError) as err:
        await finish(world, task, first, S.SUCCESSFUL)
    assert err.value.code == "stale_token" and err.value.field == "lock_token"
    # The sweep (here: its function) gives the task back; another robot takes it with a new token.
    from rpa_common.taskflow import change_state

    row = await state_of(world, task.id)
    await tx(
        world.ctx,
        lambda s: change_state(s, row, S.CREATED, actor=taskflow.Actor.system(), reason="lock expired"),
    )
    again = await take(world, queue, second)
    assert again is not None and again.id == task.id and again.lock_token == 2
    for call in (
        lambda s: taskflow.renew_lock(
            s, account_id=world.account_id, task_id=task.id, token=1, robot_id=first
        ),
        lambda s: taskflow.progress(
            s, account_id=world.account_id, task_id=task.id, token=1, robot_id=first, note="late"
        ),
        lambda s: taskflow.finish(
            s, account_id=world.account_id, task_id=task.id, token=1, robot_id=first, outcome=S.SUCCESSFUL
        ),
        # The right token from the wrong robot is refused too.
        lambda s: taskflow.finish(
            s, account_id=world.account_id, task_id=task.id, token=2, robot_id=first, outcome=S.SUCCESSFUL
        ),
    ):
        with pytest.raises(TaskError) as err:
            await tx(world.ctx, call)
        assert err.value.code == "stale_token"
    assert await finish(world, again, second, S.SUCCESSFUL) is None
    assert (await state_of(world, task.id)).state == S.SUCCESSFUL


async def test_retry_chain_up_to_max(world: World) -> None:
    queue = await make_queue(world, max_retries=2, retry_failed_application=True, unique_task_names=True)
    robot = await world.robot()
    [original] = await add(world, queue, TaskInput(name="Unique", parameters={"k": "v"}, tags=["x"]))
    chain = [original.id]
    for expected_retry in (1, 2):
        task = await take(world, queue, robot)
        assert task is not None and task.id == chain[-1]
        retry = await finish(world, task, robot, S.FAILED_APPLICATION, reason="timeout")
        assert retry is not None and retry.retry_number == expected_retry and retry.retry_of_id == task.id
        assert retry.parameters == {"k": "v"} and retry.tags == ["x"] and retry.name == "Unique"
        chain.append(retry.id)
    last = await take(world, queue, robot)
    assert last is not None and last.id == chain[-1]
    assert await finish(world, last, robot, S.FAILED_APPLICATION, reason="again") is None  # max reached
    assert [(await state_of(world, t)).state for t in chain] == [S.FAILED_APPLICATION] * 3
    # The unique name moved along the chain: a new "unique" is still refused.
    with pytest.raises(TaskError) as err:
        await add(world, queue, TaskInput(name="unique"))
    assert err.value.code == "duplicate_name" and err.value.field == "tasks[0].name"


async def test_business_failure_not_retried_unless_flagged(world: World) -> None:
    queue = await make_queue(world, max_retries=3, retry_failed_application=True, retry_failed_business=False)
    robot = await world.robot()
    await add(world, queue, TaskInput(name="b"))
    task = await take(world, queue, robot)
    assert task is not None
    assert await finish(world, task, robot, S.FAILED_BUSINESS, reason="bad data") is None
    assert (await state_of(world, task.id)).error == "bad data"


async def test_add_refusals_write_nothing(world: World) -> None:
    queue = await make_queue(world, unique_task_names=True)
    await add(world, queue, TaskInput(name="taken"))
    cases: list[tuple[list[TaskInput], str, str]] = [
        ([TaskInput(name="ok"), TaskInput(name="  ")], "invalid", "tasks[1].name"),
        ([TaskInput(name="ok"), TaskInput(name="OK")], "duplicate_name", "tasks[1].name"),
        ([TaskInput(name="ok"), TaskInput(name="Taken")], "duplicate_name", "tasks[1].name"),
        ([TaskInput(name="ok", tags=["", "x"])], "invalid", "tasks[0].tags"),
        ([TaskInput(name="ok", priority=7)], "invalid", "tasks[0].priority"),  # type: ignore[arg-type]
        ([TaskInput(name="o\x00k")], "invalid", "tasks[0].name"),
        ([TaskInput(name="ok", parameters={"a": "x" * 70000})], "invalid", "tasks[0].parameters"),
        ([TaskInput(name="ok", deadline=utcnow().replace(tzinfo=None))], "invalid", "tasks[0].deadline"),
        ([TaskInput(name=f"n{i}") for i in range(4)], "too_many", "tasks"),
        ([], "invalid", "tasks"),
    ]
    for items, code, field in cases:
        with pytest.raises(TaskError) as err:
            await add(world, queue, *items, bulk_max=3)
        assert (err.value.code, err.value.field) == (code, field), items
    async with world.ctx.sessions() as session:
        names = (await session.execute(sa.select(Task.name).where(Task.queue_id == queue.id))).scalars().all()
    assert names == ["taken"]


async def test_postponed_until_delay_passes(world: World) -> None:
    queue = await make_queue(world)
    robot = await world.robot()
    [task] = await add(world, queue, TaskInput(name="later", delay_until=utcnow() + timedelta(hours=1)))
    assert task.state == S.POSTPONED
    assert await take(world, queue, robot) is None
    await world.set(Task, task.id, delay_until=utcnow() - timedelta(seconds=1))
    taken = await take(world, queue, robot)
    assert taken is not None and taken.id == task.id
    kinds = [(e.from_state, e.to_state) for e in await history(world, task.id)]
    assert kinds == [(None, S.POSTPONED), (S.POSTPONED, S.CREATED), (S.CREATED, S.IN_PROGRESS)]


async def test_concurrent_takers_each_task_once(world: World) -> None:
    queue = await make_queue(world)
    robots = [await world.robot() for _ in range(8)]
    count = 120
    await add(world, queue, *(TaskInput(name=f"t{i}") for i in range(count)))
    taken: list[tuple[uuid.UUID, uuid.UUID]] = []

    async def robot_loop(robot_id: uuid.UUID) -> None:
        while True:
            task = await take(world, queue, robot_id)
            if task is None:
                return
            taken.append((task.id, robot_id))

    await asyncio.gather(*(robot_loop(r) for r in robots))
    ids = [t for t, _ in taken]
    assert len(ids) == count and len(set(ids)) == count
    async with world.ctx.sessions() as session:
        rows = (
            await session.execute(
                sa.select(Task.id, Task.lock_robot_id, Task.lock_token, Task.state).where(
                    Task.queue_id == queue.id
                )
            )
        ).all()
    holders = dict(taken)
    assert all(
        r.state == S.IN_PROGRESS and r.lock_token == 1 and holders[r.id] == r.lock_robot_id for r in rows
    )
    assert len({r for _, r in taken}) > 1  # the work was shared


async def test_other_account_queue_refused(world: World, ctx: ServiceContext) -> None:
    other = await new_world(ctx)
    queue = await make_queue(other)
    robot = await world.robot()
    with pytest.raises(TaskError) as err:
        await add(world, queue, TaskInput(name="x"))
    assert err.value.code == "queue_not_found" and err.value.status == 404
    with pytest.raises(TaskError):
        await take(world, queue, robot)
    assert await tx(ctx, lambda s: taskflow.queue_by_name(s, world.account_id, queue.name)) is None
    found = await tx(ctx, lambda s: taskflow.queue_by_name(s, other.account_id, queue.name.upper()))
    assert found is not None and found.id == queue.id


async def test_robot_input_refused_naming_the_field(world: World) -> None:
    queue = await make_queue(world)
    robot = await world.robot()
    await add(world, queue, TaskInput(name="t"))
    with pytest.raises(TaskError) as err:
        await take(world, queue, robot, lock_s=0)
    assert (err.value.code, err.value.field) == ("invalid", "lock_s")
    task = await take(world, queue, robot)
    assert task is not None
    calls: list[tuple[Any, str]] = [
        (
            lambda s: taskflow.renew_lock(
                s, account_id=world.account_id, task_id=task.id, token=1, robot_id=robot, lock_s=10**9
            ),
            "lock_s",
        ),
        (
            lambda s: taskflow.progress(
                s, account_id=world.account_id, task_id=task.id, token=1, robot_id=robot, note="  "
            ),
            "note",
        ),
        (
            lambda s: taskflow.finish(
                s, account_id=world.account_id, task_id=task.id, token=1, robot_id=robot, outcome=S.CREATED
            ),
            "outcome",
        ),
        (
            lambda s: taskflow.finish(
                s,
                account_id=world.account_id,
                task_id=task.id,
                token=1,
                robot_id=robot,
                outcome=S.SUCCESSFUL,
                output={"x": "\x00"},
            ),
            "output.x",
        ),
        (
            lambda s: taskflow.finish(
                s,
                account_id=world.account_id,
                task_id=task.id,
                token=-1,
                robot_id=robot,
                outcome=S.SUCCESSFUL,
            ),
            "lock_token",
        ),
    ]
    for call, field in calls:
        with pytest.raises(TaskError) as err:
            await tx(world.ctx, call)
        assert (err.value.code, err.value.field, err.value.status) == ("invalid", field, 422)
    with pytest.raises(TaskError) as err:
        await tx(
            world.ctx,
            lambda s: taskflow.finish(
                s,
                account_id=world.account_id,
                task_id=uuid.uuid4(),
                token=1,
                robot_id=robot,
                outcome=S.SUCCESSFUL,
            ),
        )
    assert (err.value.code, err.value.status) == ("task_not_found", 404)
    stored = await state_of(world, task.id)
    assert stored.state == S.IN_PROGRESS and stored.progress is None  # nothing changed
