"""Tasks, resources and credentials from scripts on REAL robot processes: the SDK's requests over
the robot's pipes, automatic lock renewal, a finish journaled while the gateway is away (delivered
once after the restart, or refused by its stale token without hanging), offline requests that raise
in bounded time, watches, and the password in no log."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from rpa_common.models import RobotMessage, Task
from rpa_common.models.enums import JobState, ResourceKind, RobotStatus, TaskState
from tests.gateway.conftest import (
    GatewayProcess,
    RobotProcess,
    World,
    assign,
    eventually,
    wait_job,
    wait_robot,
)
from tests.gateway.shared_world import Shared

S = TaskState
PASSWORD = "s3cr3t-Pa55word-for-robots"


async def running_robot(
    world: World, gateway: GatewayProcess, start_robot: Any
) -> tuple[uuid.UUID, RobotProcess]:
    robot_id, key = await world.robot()
    robot = start_robot(gateway.ws_url, key, name=f"robot-{robot_id.hex[:6]}")
    try:
        await wait_robot(world.ctx, robot_id, RobotStatus.READY)
    except AssertionError:
        raise AssertionError(f"robot did not connect:\n{robot.output()[-2000:]}") from None
    return robot_id, robot


def results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def wait_results(path: Path, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        got = results(path)
        return got if len(got) >= count else None

    try:
        return await eventually(check, timeout, f"{count} results")
    except AssertionError:
        raise AssertionError(f"results so far: {results(path)}") from None


async def job_log_text(world: World, robot_id: uuid.UUID) -> str:
    async with world.ctx.sessions() as session:
        rows = await session.execute(
            sa.select(RobotMessage.message, RobotMessage.fields).where(RobotMessage.robot_id == robot_id)
        )
        return "\n".join(f"{r.message} {json.dumps(r.fields)}" for r in rows)


async def test_the_example_process_works_a_queue_with_a_credential(
    gateway: GatewayProcess, world: World, start_robot: Any
) -> None:
    shared = Shared(world)
    robot_id, robot = await running_robot(world, gateway, start_robot)
    queue = await shared.queue(name=f"invoices-{uuid.uuid4().hex[:6]}")
    tasks = await shared.add(queue, "inv-1", "inv-2", "inv-3")
    from rpa_common.db.uow import run_in_transaction

    async def bad_amount(session: Any) -> None:
        await session.execute(sa.update(Task).where(Task.id == tasks[1].id).values(parameters={"amount": -3}))
        await session.execute(sa.update(Task).where(Task.id == tasks[0].id).values(parameters={"amount": 10}))

    await run_in_transaction(world.ctx.sessions, bad_amount)
    erp = await shared.resource(ResourceKind.CREDENTIALS, f"erp-{uuid.uuid4().hex[:6]}")
    await shared.value(erp, login="svc-erp", password=PASSWORD)
    job_id = await world.job("queue", robot_id, {"queue": queue.name, "credential": erp.name})
    await assign(world.ctx, job_id, robot_id)
    job = await wait_job(world.ctx, job_id, JobState.SUCCESSFUL, JobState.FAILED, timeout=40)
    assert job.state == JobState.SUCCESSFUL, f"{job.error}\n{robot.output()[-3000:]}"
    assert job.output_args == {"done": 2, "failed": 1, "lost": 0, "queue": queue.name}
    rows = {t.name: t for t in await shared.tasks(queue)}
    assert rows["inv-1"].state == S.SUCCESSFUL and rows["inv-1"].output == {"paid": 10.0, "by": "svc-erp"}
    assert rows["inv-2"].state == S.FAILED_BUSINESS and "not payable" in (rows["inv-2"].error or "")
    assert rows["inv-3"].state == S.SUCCESSFUL
    assert all(t.lock_job_id == job_id and t.lock_robot_id == robot_id for t in rows.values())
    logs = await job_log_text(world, robot_id)
    assert "logged in" in logs and "svc-erp" in logs
    assert PASSWORD not in logs
    assert PASSWORD not in robot.output()
    assert PASSWORD not in gateway.log_path.read_text(errors="replace")


async def test_the_robot_renews_the_lock_while_the_script_works(
    gateway: GatewayProcess, world: World, start_robot: Any, tmp_path: Path
) -> None:
    shared = Shared(world)
    robot_id, robot = await running_robot(world, gateway, start_robot)
    queue = await shared.queue()
    [task] = await shared.add(queue, "slow")
    out = tmp_path / "results.jsonl"
    go = tmp_path / "go"
    steps = [
        {"op": "take", "queue": queue.name, "lock_s": 5},
        {"op": "wait_file", "path": str(go)},
        {"op": "finish"},
    ]
    job_id = await world.job("sdk_probe", robot_id, {"steps": steps, "results": str(out)})
    await assign(world.ctx, job_id, robot_id)
    [took] = await wait_results(out, 1)
    assert took["task"] == str(task.id)
    first_expiry = (await shared.task(task.id)).lock_expires_at
    await asyncio.sleep(7)  # longer than the 5 s lock: only renewals keep it
    row = await shared.task(task.id)
    assert row.state == S.IN_PROGRESS and row.lock_expires_at is not None and first_expiry is not None
    assert row.lock_expires_at > first_expiry
    go.touch()
    _, finished = await wait_results(out, 2)
    assert finished == {"op": "finish", "retry": None}, robot.output()[-2000:]
    assert (await shared.task(task.id)).state == S.SUCCESSFUL
    await wait_job(world.ctx, job_id, JobState.SUCCESSFUL)


async def test_a_finish_journaled_while_the_gateway_is_away_is_delivered_once(
    world: World, gateway_factory: Any, start_robot: Any, tmp_path: Path
) -> None:
    shared = Shared(world)
    gw: GatewayProcess = gateway_factory()
    await asyncio.to_thread(gw.start)
    robot_id, robot = await running_robot(world, gw, start_robot)
    queue = await shared.queue()
    [task] = await shared.add(queue, "through-a-restart")
    out, go = tmp_path / "results.jsonl", tmp_path / "go"
    steps = [
        {"op": "take", "queue": queue.name},
        {"op": "wait_file", "path": str(go)},
        {"op": "take", "queue": queue.name, "timeout": 2},  # the gateway is away: offline, in bounded time
        {"op": "finish", "timeout": 60},
    ]
    job_id = await world.job("sdk_probe", robot_id, {"steps": steps, "results": str(out)})
    await assign(world.ctx, job_id, robot_id)
    await wait_results(out, 1)
    gw.kill()
    go.touch()
    _, offline = await wait_results(out, 2, timeout=20)
    assert (offline["error"], offline["class"]) == ("offline", "Offline")
    await asyncio.sleep(1.0)  # the finish is journaled meanwhile
    assert (await shared.task(task.id)).state == S.IN_PROGRESS
    restarted = GatewayProcess(gw.db_url, tmp_path / "gateway-restarted.log", port=gw.port)
    await asyncio.to_thread(restarted.start)
    try:
        *_, finished = await wait_results(out, 3, timeout=40)
        assert finished == {"op": "finish", "retry": None}, robot.output()[-3000:]
        assert (await shared.task(task.id)).state == S.SUCCESSFUL
        ends = [e for e in await shared.task_events(task.id) if e.to_state == S.SUCCESSFUL]
        assert len(ends) == 1
        await wait_job(world.ctx, job_id, JobState.SUCCESSFUL, timeout=20)
    finally:
        restarted.stop()


async def test_a_journaled_finish_whose_lock_was_lost_is_refused_and_the_call_returns(
    world: World, gateway_factory: Any, start_robot: Any, tmp_path: Path
) -> None:
    shared = Shared(world)
    gw: GatewayProcess = gateway_factory()
    await asyncio.to_thread(gw.start)
    robot_id, robot = await running_robot(world, gw, start_robot)
    other_id, _ = await world.robot()
    queue = await shared.queue()
    [task] = await shared.add(queue, "lost-lock")
    out, go = tmp_path / "results.jsonl", tmp_path / "go"
    steps = [{"op": "take", "queue": queue.name}, {"op": "wait_file", "path": str(go)}, {"op": "finish"}]
    job_id = await world.job("sdk_probe", robot_id, {"steps": steps, "results": str(out)})
    await assign(world.ctx, job_id, robot_id)
    [took] = await wait_results(out, 1)
    gw.kill()
    go.touch()
    await asyncio.sleep(0.5)
    # While the robot is away its lock runs out and another robot takes the task (a new token).
    from rpa_common.db.uow import run_in_transaction
    from rpa_common.models.base import utcnow

    async def taken_by_other(session: Any) -> None:
        await session.execute(
            sa.update(Task)
            .where(Task.id == task.id)
            .values(lock_robot_id=other_id, lock_token=Task.lock_token + 1, lock_expires_at=utcnow())
        )

    await run_in_transaction(world.ctx.sessions, taken_by_other)
    restarted = GatewayProcess(gw.db_url, tmp_path / "gateway-restarted.log", port=gw.port)
    await asyncio.to_thread(restarted.start)
    try:
        _, refused = await wait_results(out, 2, timeout=40)
        assert (refused["error"], refused["field"], refused["class"]) == (
            "stale_token",
            "lock_token",
            "TaskError",
        ), robot.output()[-2000:]
        row = await shared.task(task.id)
        assert row.lock_robot_id == other_id and row.lock_token == took["token"] + 1
        await wait_job(world.ctx, job_id, JobState.SUCCESSFUL, timeout=20)
    finally:
        restarted.stop()


async def test_scripts_read_set_and_watch_resources(
    gateway: GatewayProcess, world: World, start_robot: Any, tmp_path: Path
) -> None:
    shared = Shared(world)
    robot_id, robot = await running_robot(world, gateway, start_robot)
    mode = await shared.resource(ResourceKind.TEXT)
    everyone = await shared.value(mode, text="normal")
    counter = await shared.resource(ResourceKind.TEXT)
    mine = await shared.value(counter, robot_id=robot_id, text="1")
    login = await shared.resource(ResourceKind.CREDENTIALS)
    await shared.value(login, login="bot", password=PASSWORD)
    queue = await shared.queue()
    out = tmp_path / "results.jsonl"
    steps = [
        {"op": "get", "name": mode.name, "watch": True},
        {"op": "set", "name": counter.name, "value": "2"},
        {"op": "credential", "name": login.name},
        {"op": "credential", "name": "no-such-credential"},
        {"op": "add", "queue": queue.name, "names": ["a", "b"]},
        {"op": "add", "queue": "no-such-queue", "names": ["c"]},
        {"op": "threads", "name": counter.name, "count": 8},
        {"op": "wait_change", "name": mode.name, "text": "busy"},
    ]
    job_id = await world.job("sdk_probe", robot_id, {"steps": steps, "results": str(out)})
    await assign(world.ctx, job_id, robot_id)
    got = await wait_results(out, 7)
    assert got[0] == {"op": "get", "text": "normal", "kind": "text"}
    assert got[1] == {"op": "set", "text": "2"} and await shared.text_of(mine) == "2"
    assert got[2] == {
        "op": "credential",
        "login": "bot",
        "sha256": hashlib.sha256(PASSWORD.encode()).hexdigest(),
    }
    assert (got[3]["error"], got[3]["class"]) == ("resource_not_found", "ResourceError")
    assert len(got[4]["ids"]) == 2 and [t.name for t in await shared.tasks(queue)] == ["a", "b"]
    assert (got[5]["error"], got[5]["field"], got[5]["class"]) == ("queue_not_found", "queue", "TaskError")
    assert got[6] == {"op": "threads", "texts": ["2"] * 8}
    await shared.set_text(everyone, "busy")
    await shared.announce(mode)
    await wait_results(out, 8)
    job = await wait_job(world.ctx, job_id, JobState.SUCCESSFUL, JobState.FAILED)
    assert job.state == JobState.SUCCESSFUL, job.error
    logs = await job_log_text(world, robot_id)
    assert "credential read: Credential(" in logs and PASSWORD not in logs
    assert PASSWORD not in robot.output()
