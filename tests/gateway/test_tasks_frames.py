"""Task frames spoken by hand against a real gateway: add, take, renew, progress, finish, their
replies and errors, the fencing token, replays applied once, and what is refused changes nothing."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rpa_common.models.enums import TaskEventKind, TaskPriority, TaskState
from rpa_protocol import (
    Ack,
    Error,
    TaskAdd,
    TaskAdded,
    TaskFinish,
    TaskFinished,
    TaskItem,
    TaskProgress,
    TaskProgressed,
    TaskRenew,
    TaskRenewed,
    TaskTake,
    TaskTaken,
)
from tests.gateway.conftest import GatewayProcess, World
from tests.gateway.shared_world import Shared, Wire

S = TaskState


def rid() -> uuid.UUID:
    return uuid.uuid4()


@pytest.fixture
def shared(world: World) -> Shared:
    return Shared(world)


KEYS: dict[uuid.UUID, str] = {}


async def robot(
    world: World, gateway: GatewayProcess, caps: list[str] | None = None
) -> tuple[uuid.UUID, Wire]:
    robot_id, key = await world.robot()
    KEYS[robot_id] = key
    return robot_id, await Wire.open(gateway, key, caps)


async def test_add_take_finish_through_frames(gateway: GatewayProcess, world: World, shared: Shared) -> None:
    robot_id, wire = await robot(world, gateway)
    queue = await shared.queue()
    deadline = datetime.now(UTC) - timedelta(minutes=1)
    add = TaskAdd(
        seq=wire.next_seq(),
        request_id=rid(),
        queue=queue.name,
        tasks=[
            TaskItem(name="low", priority="low"),
            TaskItem(name="high", priority="high", parameters={"amount": 12.5}, tags=["eu"]),
            TaskItem(name="overdue", priority="low", deadline=deadline, description="late"),
            TaskItem(name="later", delay_until=datetime.now(UTC) + timedelta(hours=1)),
        ],
    )
    added = await wire.call(add, TaskAdded)
    assert added.error is None and added.seq == add.seq and not added.duplicate
    assert len(added.task_ids) == 4
    await wire.acked(add.seq)
    rows = {t.name: t for t in await shared.tasks(queue)}
    assert [rows[n].id for n in ("low", "high", "overdue", "later")] == added.task_ids
    assert rows["later"].state == S.POSTPONED and rows["high"].priority == TaskPriority.HIGH
    assert rows["high"].parameters == {"amount": 12.5} and rows["high"].tags == ["eu"]

    # Overdue first, then priority, then age; the postponed one is not given.
    taken = []
    for _ in range(4):
        reply = await wire.call(TaskTake(seq=wire.next_seq(), request_id=rid(), queue=queue.name), TaskTaken)
        assert reply.error is None
        taken.append(reply.task)
    assert [t.name if t else None for t in taken] == ["overdue", "high", "low", None]
    first = taken[0]
    assert first is not None and first.lock_token >= 1 and first.queue == queue.name
    assert first.description == "late" and first.deadline is not None
    assert first.lock_expires_at > datetime.now(UTC) + timedelta(seconds=200)  # RPA_TASK_LOCK_S default
    high = taken[1]
    assert high is not None and high.parameters == {"amount": 12.5} and high.priority == "high"
    row = await shared.task(first.id)
    assert row.state == S.IN_PROGRESS and row.lock_robot_id == robot_id and row.lock_token == first.lock_token

    renewed = await wire.call(
        TaskRenew(
            seq=wire.next_seq(), request_id=rid(), task_id=first.id, lock_token=first.lock_token, lock_s=30
        ),
        TaskRenewed,
    )
    assert renewed.error is None and renewed.lock_expires_at is not None
    assert renewed.lock_expires_at < datetime.now(UTC) + timedelta(seconds=40)

    note = TaskProgress(
        seq=wire.next_seq(), request_id=rid(), task_id=first.id, lock_token=first.lock_token, note="page 2"
    )
    assert (await wire.call(note, TaskProgressed)).error is None
    await wire.acked(note.seq)

    finish = TaskFinish(
        seq=wire.next_seq(),
        request_id=rid(),
        task_id=first.id,
        lock_token=first.lock_token,
        outcome="successful",
        output={"paid": 1},
    )
    finished = await wire.call(finish, TaskFinished)
    assert finished.error is None and finished.retry_task_id is None
    await wire.acked(finish.seq)
    row = await shared.task(first.id)
    assert row.state == S.SUCCESSFUL and row.output == {"paid": 1} and row.ended_at is not None
    kinds = [(e.kind, e.to_state) for e in await shared.task_events(first.id)]
    assert (TaskEventKind.PROGRESS, None) in kinds and kinds[-1] == (TaskEventKind.STATE, S.SUCCESSFUL)

    # A business failure with a reason; the queue retries Failed (Application) only by default.
    assert high is not None
    failed = await wire.call(
        TaskFinish(
            seq=wire.next_seq(),
            request_id=rid(),
            task_id=high.id,
            lock_token=high.lock_token,
            outcome="failed_business",
            reason="no such customer",
        ),
        TaskFinished,
    )
    assert failed.error is None and failed.retry_task_id is None
    assert (await shared.task(high.id)).error == "no such customer"
    await wire.close()


async def test_a_failed_application_task_is_retried_and_the_retry_named(
    gateway: GatewayProcess, world: World, shared: Shared
) -> None:
    _, wire = await robot(world, gateway)
    queue = await shared.queue(max_retries=1, retry_failed_application=True)
    await shared.add(queue, "flaky")
    taken = (
        await wire.call(TaskTake(seq=wire.next_seq(), request_id=rid(), queue=queue.name), TaskTaken)
    ).task
    assert taken is not None
    done = await wire.call(
        TaskFinish(
            seq=wire.next_seq(), request_id=rid(), task_id=taken.id, lock_token=taken.lock_token,
            outcome="failed_application", reason="screen did not load",
        ),
        TaskFinished,
    )  # fmt: skip
    assert done.error is None and done.retry_task_id is not None
    again = (
        await wire.call(TaskTake(seq=wire.next_seq(), request_id=rid(), queue=queue.name), TaskTaken)
    ).task
    assert again is not None and again.id == done.retry_task_id and again.retry_number == 1
    await wire.close()


async def test_a_stale_token_is_refused_and_changes_nothing(
    gateway: GatewayProcess, world: World, shared: Shared
) -> None:
    robot_a, late = await robot(world, gateway)
    robot_b, other = await robot(world, gateway)
    queue = await shared.queue()
    [task] = await shared.add(queue, "contested")
    first = (
        await late.call(TaskTake(seq=late.next_seq(), request_id=rid(), queue=queue.name), TaskTaken)
    ).task
    assert first is not None and first.id == task.id
    await shared.expire_lock(task.id)  # robot A went quiet past its lock
    second = (
        await other.call(TaskTake(seq=other.next_seq(), request_id=rid(), queue=queue.name), TaskTaken)
    ).task
    assert second is not None and second.id == task.id and second.lock_token > first.lock_token

    renew = await late.call(
        TaskRenew(seq=late.next_seq(), request_id=rid(), task_id=task.id, lock_token=first.lock_token),
        TaskRenewed,
    )
    assert renew.error is not None and renew.error.code == "stale_token" and renew.error.field == "lock_token"
    finish = TaskFinish(
        seq=late.next_seq(),
        request_id=rid(),
        task_id=task.id,
        lock_token=first.lock_token,
        outcome="successful",
    )
    refused = await late.call(finish, TaskFinished)
    assert refused.error is not None and refused.error.code == "stale_token"
    await late.acked(finish.seq)  # answered and acknowledged: the robot forgets it, it would fail forever
    row = await shared.task(task.id)
    assert row.state == S.IN_PROGRESS and row.lock_robot_id == robot_b and row.lock_token == second.lock_token

    ok = await other.call(
        TaskFinish(
            seq=other.next_seq(),
            request_id=rid(),
            task_id=task.id,
            lock_token=second.lock_token,
            outcome="successful",
        ),
        TaskFinished,
    )
    assert ok.error is None and (await shared.task(task.id)).state == S.SUCCESSFUL
    # After the end, the old token hears "not in progress".
    late_again = await late.call(
        TaskFinish(
            seq=late.next_seq(),
            request_id=rid(),
            task_id=task.id,
            lock_token=first.lock_token,
            outcome="successful",
        ),
        TaskFinished,
    )
    assert late_again.error is not None and late_again.error.code == "not_in_progress"
    assert robot_a != robot_b
    await late.close()
    await other.close()


async def test_a_replayed_finish_is_applied_once_and_answered_as_a_duplicate(
    gateway: GatewayProcess, world: World, shared: Shared
) -> None:
    robot_id, wire = await robot(world, gateway)
    queue = await shared.queue()
    await shared.add(queue, "once")
    taken = (
        await wire.call(TaskTake(seq=wire.next_seq(), request_id=rid(), queue=queue.name), TaskTaken)
    ).task
    assert taken is not None
    finish = TaskFinish(
        seq=wire.next_seq(),
        request_id=rid(),
        task_id=taken.id,
        lock_token=taken.lock_token,
        outcome="successful",
    )
    assert (await wire.call(finish, TaskFinished)).error is None
    await wire.close()
    # The robot lost the ack with its connection and replays the journaled frame on a new one.
    again = await Wire.open(gateway, KEYS[robot_id])
    assert again.welcome.resume is not None and again.welcome.resume.last_seq == finish.seq
    replay = await again.call(finish, TaskFinished)
    assert replay.duplicate and replay.error is None
    assert (await again.recv(Ack)).seq == finish.seq
    ends = [e for e in await shared.task_events(taken.id) if e.to_state == S.SUCCESSFUL]
    assert len(ends) == 1
    # A replayed add adds nothing either.
    add = TaskAdd(seq=again.next_seq(), request_id=rid(), queue=queue.name, tasks=[TaskItem(name="x")])
    assert len((await again.call(add, TaskAdded)).task_ids) == 1
    dup = await again.call(add, TaskAdded)
    assert dup.duplicate and dup.task_ids == []
    assert [t.name for t in await shared.tasks(queue)].count("x") == 1
    await again.close()


async def test_refused_requests_name_the_field_and_change_nothing(
    gateway: GatewayProcess, world: World, shared: Shared
) -> None:
    _, wire = await robot(world, gateway)
    queue = await shared.queue(unique_task_names=True)
    await shared.add(queue, "taken-name")

    async def add_error(tasks: list[TaskItem], queue_name: str = queue.name) -> Any:
        reply = await wire.call(
            TaskAdd(seq=wire.next_seq(), request_id=rid(), queue=queue_name, tasks=tasks), TaskAdded
        )
        assert reply.error is not None and reply.task_ids == []
        return reply.error

    err = await add_error([TaskItem(name="new")], "no-such-queue")
    assert (err.code, err.field) == ("queue_not_found", "queue")
    err = await add_error([TaskItem(name="a"), TaskItem(name="taken-name")])
    assert (err.code, err.field) == ("duplicate_name", "tasks.1.name")
    err = await add_error([TaskItem(name="b"), TaskItem(name="B")])
    assert (err.code, err.field) == ("duplicate_name", "tasks.1.name")
    assert [t.name for t in await shared.tasks(queue)] == ["taken-name"]  # nothing half written

    take = await wire.call(TaskTake(seq=wire.next_seq(), request_id=rid(), queue="nope"), TaskTaken)
    assert take.task is None and take.error is not None and take.error.code == "queue_not_found"
    take = await wire.call(
        TaskTake(seq=wire.next_seq(), request_id=rid(), queue=queue.name, job_id=uuid.uuid4()), TaskTaken
    )
    assert take.error is not None and (take.error.code, take.error.field) == ("invalid", "job_id")
    unknown = await wire.call(
        TaskFinish(
            seq=wire.next_seq(), request_id=rid(), task_id=uuid.uuid4(), lock_token=1, outcome="successful"
        ),
        TaskFinished,
    )
    assert unknown.error is not None and unknown.error.code == "task_not_found"

    # Malformed frames: an ``error`` naming the field, nothing applied.
    seq = wire.next_seq()
    await wire.send(
        json.dumps(
            {"type": "task.add", "seq": seq, "request_id": str(rid()), "queue": queue.name,
             "tasks": [{"name": "ok"}, {"name": "bad", "priority": "urgent"}]}
        )
    )  # fmt: skip
    bad = await wire.recv(Error, lambda e: e.seq == seq)
    assert (bad.code, bad.field) == ("bad_frame", "tasks.1.priority")
    seq = wire.next_seq()
    await wire.send(
        json.dumps({"type": "task.add", "seq": seq, "request_id": str(rid()), "queue": queue.name,
                    "tasks": [{"name": f"t{i}"} for i in range(1001)]})
    )  # fmt: skip
    assert (await wire.recv(Error, lambda e: e.seq == seq)).field == "tasks"
    assert [t.name for t in await shared.tasks(queue)] == ["taken-name"]
    await wire.close()


async def test_another_accounts_queue_does_not_exist_for_a_robot(
    gateway: GatewayProcess, world: World, shared: Shared, ctx: Any
) -> None:
    other = World(ctx, uuid.uuid4())
    from rpa_common.db.uow import run_in_transaction
    from rpa_common.models import Account

    async def account(session: Any) -> None:
        session.add(Account(id=other.account_id, name=f"gw-{other.account_id.hex[:12]}"))

    await run_in_transaction(ctx.sessions, account)
    theirs = await Shared(other).queue()
    await Shared(other).add(theirs, "secret-task")
    _, wire = await robot(world, gateway)
    take = await wire.call(TaskTake(seq=wire.next_seq(), request_id=rid(), queue=theirs.name), TaskTaken)
    assert take.task is None and take.error is not None and take.error.code == "queue_not_found"
    add = await wire.call(
        TaskAdd(seq=wire.next_seq(), request_id=rid(), queue=theirs.name, tasks=[TaskItem(name="x")]),
        TaskAdded,
    )
    assert add.error is not None and add.error.code == "queue_not_found"
    assert [t.name for t in await Shared(other).tasks(theirs)] == ["secret-task"]
    await wire.close()


async def test_task_frames_need_the_capability_and_a_main_connection(
    gateway: GatewayProcess, world: World, shared: Shared
) -> None:
    queue = await shared.queue()
    _, plain = await robot(world, gateway, ["jobs", "logs"])
    assert "tasks" not in plain.welcome.capabilities
    await plain.send(TaskTake(seq=1, request_id=rid(), queue=queue.name))
    err = await plain.recv(Error)
    assert (err.code, err.field, err.seq) == ("not_allowed", "type", 1)
    _, full = await robot(world, gateway)
    assert {"tasks", "resources"} <= set(full.welcome.capabilities)
    _, control = await robot(world, gateway, ["job.request", "tasks", "resources"])
    assert control.welcome.resume is None and "tasks" not in control.welcome.capabilities
    await control.send(TaskTake(seq=1, request_id=rid(), queue=queue.name))
    assert (await control.recv(Error)).code == "not_allowed"
    for wire in (plain, full, control):
        await wire.close()


async def test_one_refused_frame_does_not_hold_back_the_others_of_its_batch(
    gateway: GatewayProcess, world: World, shared: Shared
) -> None:
    queue = await shared.queue()
    await shared.add(queue, *[f"t{i}" for i in range(6)])
    wires = [(await robot(world, gateway))[1] for _ in range(6)]
    taken = await asyncio.gather(
        *(w.call(TaskTake(seq=w.next_seq(), request_id=rid(), queue=queue.name), TaskTaken) for w in wires)
    )
    ids = [t.task.id for t in taken if t.task is not None]
    assert len(set(ids)) == 6  # each task to one robot
    finishes = []
    for i, (w, t) in enumerate(zip(wires, taken, strict=True)):
        assert t.task is not None
        token = t.task.lock_token + (1 if i == 0 else 0)  # the first robot sends a wrong token
        finishes.append(
            w.call(
                TaskFinish(
                    seq=w.next_seq(),
                    request_id=rid(),
                    task_id=t.task.id,
                    lock_token=token,
                    outcome="successful",
                ),
                TaskFinished,
            )
        )
    replies = await asyncio.gather(*finishes)
    assert replies[0].error is not None and replies[0].error.code == "stale_token"
    assert all(r.error is None for r in replies[1:])
    states = {t.name: t.state for t in await shared.tasks(queue)}
    assert (
        sorted(states.values()).count(S.SUCCESSFUL) == 5 and list(states.values()).count(S.IN_PROGRESS) == 1
    )
    for w in wires:
        await w.close()
