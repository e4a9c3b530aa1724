"""A robot's status history (``robot_status_interval``), written by the real gateway as the robot
connects, works a job, finishes it and goes away: one interval per status, back to back, none open
once it is disconnected. Robot utilisation (the statistics API) is read from these rows."""

from __future__ import annotations

import itertools

import sqlalchemy as sa

from rpa_common.models import RobotStatusInterval
from rpa_common.models.enums import RobotStatus
from rpa_protocol import Ack, JobStart, JobStatus, encode
from tests.gateway.conftest import GatewayProcess, World, assign, eventually, wait_robot
from tests.gateway.test_protocol import open_robot, recv


async def _history(world: World, robot_id: object) -> list[RobotStatusInterval]:
    async with world.ctx.sessions() as session:
        rows = await session.execute(
            sa.select(RobotStatusInterval)
            .where(RobotStatusInterval.robot_id == robot_id)
            .order_by(RobotStatusInterval.started_at)
        )
        return list(rows.scalars())


async def test_connect_work_finish_disconnect_writes_one_interval_per_status(
    gateway: GatewayProcess, world: World
) -> None:
    robot_id, key = await world.robot()
    job_id = await world.job("hello", robot_id, {"name": "tester"})
    ws, _ = await open_robot(gateway, key)
    await wait_robot(world.ctx, robot_id, RobotStatus.READY, timeout=5)
    [ready] = await _history(world, robot_id)
    assert ready.status == RobotStatus.READY and ready.ended_at is None

    attempt = await assign(world.ctx, job_id, robot_id)
    await recv(ws, JobStart)
    await wait_robot(world.ctx, robot_id, RobotStatus.WORKING, timeout=5)
    for seq, status in ((1, "running"), (2, "successful")):
        await ws.send(encode(JobStatus(seq=seq, job_id=job_id, attempt=attempt, status=status)))
        await recv(ws, Ack)
    await wait_robot(world.ctx, robot_id, RobotStatus.READY, timeout=5)
    await ws.close()
    await wait_robot(world.ctx, robot_id, RobotStatus.DISCONNECTED, timeout=5)

    async def closed() -> list[RobotStatusInterval]:
        rows = await _history(world, robot_id)
        return rows if rows and all(r.ended_at is not None for r in rows) else []

    rows = await eventually(closed, 5, "every interval closed")
    assert [r.status for r in rows] == [RobotStatus.READY, RobotStatus.WORKING, RobotStatus.READY]
    for before, after in itertools.pairwise(rows):
        assert before.ended_at == after.started_at  # back to back: no gap, no overlap
    assert all(r.ended_at is not None and r.ended_at >= r.started_at for r in rows)
