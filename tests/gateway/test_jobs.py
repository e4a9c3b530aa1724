"""Jobs run on real robots: a real gateway process and real ``rpa-robot`` processes run the
example packages; the database is checked for what a user would look at (job state, output,
error, history, logs, robot status) and the OS for leftover script processes."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import ProcessVersion, Robot
from rpa_common.models.enums import JobState, LogLevel, RobotStatus
from tests.gateway.conftest import (
    GatewayProcess,
    RobotProcess,
    World,
    assign,
    events,
    eventually,
    job_row,
    messages,
    robot_row,
    wait_job,
    wait_robot,
)

S = JobState


async def running_robot(
    world: World, gateway: GatewayProcess, start_robot: Any, *extra: str
) -> tuple[uuid.UUID, RobotProcess]:
    robot_id, key = await world.robot()
    robot = start_robot(gateway.ws_url, key, *extra)
    try:
        await wait_robot(world.ctx, robot_id, RobotStatus.READY)
    except AssertionError:
        raise AssertionError(f"robot did not connect:\n{robot.output()[-2000:]}") from None
    return robot_id, robot


async def test_script_that_logs_and_sets_output_ends_successful(
    gateway: GatewayProcess, world: World, start_robot: Any
) -> None:
    # --exit-after-job: the robot leaves after its job, as an unattended session's robot does.
    robot_id, robot = await running_robot(world, gateway, start_robot, "--exit-after-job")
    job_id = await world.job("hello", robot_id, {"name": "Ada", "count": 4})
    attempt = await assign(world.ctx, job_id, robot_id)
    job = await wait_job(world.ctx, job_id, S.SUCCESSFUL, S.FAILED)
    assert job.state == S.SUCCESSFUL, job.error
    assert job.output_args == {"greeting": "Hello, Ada!", "lines": 4}
    assert job.started_at is not None and job.ended_at is not None and job.lease_expires_at is None
    assert await events(world.ctx, job_id) == [
        (None, S.PENDING),
        (S.PENDING, S.STARTING),
        (S.STARTING, S.RUNNING),
        (S.RUNNING, S.SUCCESSFUL),
    ]
    logs = [m for m in await messages(world.ctx, job_id) if m.message.startswith("hello")]
    assert [m.message for m in logs] == [f"hello Ada #{n}" for n in range(4)]
    assert all(m.fields == {"n": n} and m.level == LogLevel.INFO for n, m in enumerate(logs))
    assert all(m.process_id == job.process_id and m.robot_id == robot_id for m in logs)
    assert attempt == job.attempt == 1
    # Logged off: Disconnected as soon as its job ended (no second job is dispatched to it), then gone.
    robot_after = await wait_robot(world.ctx, robot_id, RobotStatus.DISCONNECTED, timeout=5)
    assert robot_after.current_job_id is None and robot_after.gateway_id is None
    assert await asyncio.to_thread(robot.proc.wait, 20) == 0, robot.output()[-2000:]


async def test_script_that_raises_ends_failed_with_its_error(
    gateway: GatewayProcess, world: World, start_robot: Any
) -> None:
    robot_id, _ = await running_robot(world, gateway, start_robot)
    job_id = await world.job("fail", robot_id)
    await assign(world.ctx, job_id, robot_id)
    job = await wait_job(world.ctx, job_id, S.SUCCESSFUL, S.FAILED)
    assert job.state == S.FAILED
    assert job.error == "RuntimeError: something went wrong on purpose"
    logs = await messages(world.ctx, job_id)
    assert any(m.message == "about to fail" and m.level == LogLevel.WARNING for m in logs)
    assert any("Traceback" in m.message and m.level == LogLevel.ERROR for m in logs)
    # The robot is free again and takes the next job.
    await wait_robot(world.ctx, robot_id, RobotStatus.READY)
    next_job = await world.job("hello", robot_id, {"count": 1})
    await assign(world.ctx, next_job, robot_id)
    assert (await wait_job(world.ctx, next_job, S.SUCCESSFUL, S.FAILED)).state == S.SUCCESSFUL


async def test_soft_stop_ends_stopped(gateway: GatewayProcess, world: World, start_robot: Any) -> None:
    robot_id, _ = await running_robot(world, gateway, start_robot)
    job_id = await world.job("long", robot_id)
    await assign(world.ctx, job_id, robot_id)
    await wait_job(world.ctx, job_id, S.RUNNING)
    await world.control(job_id, "stop")
    job = await wait_job(world.ctx, job_id, S.STOPPED, S.FAILED, S.INTERRUPTED, S.SUCCESSFUL)
    assert job.state == S.STOPPED, job.error
    assert "stopped_at_step" in (job.output_args or {})
    assert (await events(world.ctx, job_id))[-2:] == [(S.RUNNING, S.STOPPING), (S.STOPPING, S.STOPPED)]
    assert any(m.message.startswith("stop requested") for m in await messages(world.ctx, job_id))
    await wait_robot(world.ctx, robot_id, RobotStatus.READY)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_script_ignoring_soft_stop_is_interrupted_with_its_process_tree(
    gateway: GatewayProcess, world: World, start_robot: Any
) -> None:
    robot_id, _ = await running_robot(world, gateway, start_robot)
    job_id = await world.job("stubborn", robot_id)
    await assign(world.ctx, job_id, robot_id)
    await wait_job(world.ctx, job_id, S.RUNNING)

    async def started() -> dict[str, Any] | None:
        for m in await messages(world.ctx, job_id):
            if m.message == "started" and m.fields:
                return m.fields
        return None

    pids = await eventually(started, 10, "the script's pids")
    script_pid, child_pid = int(pids["pid"]), int(pids["child_pid"])
    assert psutil.pid_exists(script_pid) and psutil.pid_exists(child_pid)
    await world.control(job_id, "stop")
    await asyncio.sleep(1.5)
    assert (await wait_job(world.ctx, job_id, S.STOPPING)).state == S.STOPPING  # it ignored the request
    assert not _gone(script_pid)
    await world.control(job_id, "interrupt")
    job = await wait_job(world.ctx, job_id, S.INTERRUPTED, S.FAILED, S.STOPPED)
    assert job.state == S.INTERRUPTED
    assert (await events(world.ctx, job_id))[-2:] == [
        (S.STOPPING, S.INTERRUPTING),
        (S.INTERRUPTING, S.INTERRUPTED),
    ]

    async def tree_gone() -> bool:
        return _gone(script_pid) and _gone(child_pid)

    await eventually(tree_gone, 10, "the script and its child to be killed")
    await wait_robot(world.ctx, robot_id, RobotStatus.READY)


async def test_gateway_restart_mid_job_loses_and_doubles_nothing(
    world: World, gateway_factory: Any, start_robot: Any, tmp_path: Path
) -> None:
    gw: GatewayProcess = gateway_factory()
    gw.start()
    robot_id, robot = await running_robot(world, gw, start_robot)
    ids_file = tmp_path / "ids.txt"
    count = 40
    job_id = await world.job("hello", robot_id, {"count": count, "delay_s": 0.05, "ids_file": str(ids_file)})
    await assign(world.ctx, job_id, robot_id)
    await wait_job(world.ctx, job_id, S.RUNNING)

    async def some_logged() -> bool:
        return len(await messages(world.ctx, job_id)) >= 5

    await eventually(some_logged, 10, "the first log lines")
    gw.kill()  # a crash mid-job: frames in flight are neither applied nor acknowledged
    await asyncio.sleep(0.8)  # the script keeps running and logging while the gateway is away
    restarted = GatewayProcess(gw.db_url, tmp_path / "gateway-restarted.log", port=gw.port)
    await asyncio.to_thread(restarted.start)
    try:
        job = await wait_job(world.ctx, job_id, S.SUCCESSFUL, S.FAILED, timeout=30)
        assert job.state == S.SUCCESSFUL, f"{job.error}\n{robot.output()[-3000:]}"
        transitions = await events(world.ctx, job_id)
        assert transitions.count((S.STARTING, S.RUNNING)) == 1
        assert transitions.count((S.RUNNING, S.SUCCESSFUL)) == 1
        logged = ids_file.read_text().split()
        assert len(logged) == count
        stored = [m for m in await messages(world.ctx, job_id) if m.message.startswith("hello")]
        assert sorted(str(m.id) for m in stored) == sorted(logged)  # each line exactly once
        assert "replaying" in robot.output()
        await wait_robot(world.ctx, robot_id, RobotStatus.READY)
        assert (await robot_row(world.ctx, robot_id)).gateway_id is not None
    finally:
        restarted.stop()


async def test_job_dispatched_while_the_robot_was_away_runs_when_it_connects(
    gateway: GatewayProcess, world: World, start_robot: Any
) -> None:
    """Resume: on (re)connect the gateway offers the robot every active job that is its own."""
    robot_id, key = await world.robot()
    job_id = await world.job("hello", robot_id, {"count": 1})

    async def seen_on_a_gone_gateway(session: AsyncSession) -> None:
        await session.execute(
            sa.update(Robot).where(Robot.id == robot_id).values(gateway_id="gone", status=RobotStatus.READY)
        )

    await run_in_transaction(world.ctx.sessions, seen_on_a_gone_gateway)
    await assign(world.ctx, job_id, robot_id)  # the offer goes to a gateway nobody runs
    assert (await job_row(world.ctx, job_id)).state == S.STARTING
    start_robot(gateway.ws_url, key)
    job = await wait_job(world.ctx, job_id, S.SUCCESSFUL, S.FAILED)
    assert job.state == S.SUCCESSFUL, job.error
    assert (await events(world.ctx, job_id)).count((S.STARTING, S.RUNNING)) == 1


async def test_package_that_does_not_match_its_sha256_fails_the_job(
    gateway: GatewayProcess, world: World, start_robot: Any
) -> None:
    robot_id, _ = await running_robot(world, gateway, start_robot)
    job_id = await world.job("hello", robot_id)
    _, version_id = world.versions["hello"]

    async def tamper(session: AsyncSession) -> None:
        await session.execute(
            sa.update(ProcessVersion).where(ProcessVersion.id == version_id).values(sha256="0" * 64)
        )

    await run_in_transaction(world.ctx.sessions, tamper)
    await assign(world.ctx, job_id, robot_id)
    job = await wait_job(world.ctx, job_id, S.SUCCESSFUL, S.FAILED)
    assert job.state == S.FAILED
    assert job.error is not None and "checksum mismatch" in job.error
    assert not [m for m in await messages(world.ctx, job_id) if m.message.startswith("hello")]
