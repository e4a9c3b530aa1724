"""The scheduler's side of the robots' status history: dispatch makes a connected robot Working (its
Ready interval closes, a Working one opens, in the dispatch transaction), and the heartbeat sweep makes
a silent robot Disconnected (its open interval closes). Robot utilisation is read from these rows."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from rpa_common.models import Job, Robot, RobotStatusInterval
from rpa_common.models.base import utcnow
from rpa_common.models.enums import JobState, RobotStatus
from rpa_common.service import ServiceContext
from rpa_scheduler.dispatch import dispatch_pass
from rpa_scheduler.sweeps import sweep_heartbeats
from tests.scheduler.factory import World, ago, new_world


async def _history(world: World, robot_id: uuid.UUID) -> list[RobotStatusInterval]:
    async with world.ctx.sessions() as session:
        rows = await session.execute(
            sa.select(RobotStatusInterval)
            .where(RobotStatusInterval.robot_id == robot_id)
            .order_by(RobotStatusInterval.started_at)
        )
        return list(rows.scalars())


async def test_dispatch_opens_working_and_the_sweep_closes_it(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    connected_at = ago(60)
    # Connected and Ready, as the gateway's attach leaves it.
    await world._add(
        RobotStatusInterval(
            id=uuid.uuid4(),
            account_id=world.account_id,
            robot_id=robot,
            status=RobotStatus.READY,
            started_at=connected_at,
        )
    )
    job_id = await world.job(robot_id=robot)
    await dispatch_pass(ctx)
    assert (await world.get(Job, job_id)).state == JobState.STARTING
    assert (await world.get(Robot, robot)).status == RobotStatus.WORKING
    ready, working = await _history(world, robot)
    assert ready.status == RobotStatus.READY and ready.ended_at is not None
    assert working.status == RobotStatus.WORKING and working.ended_at is None
    assert working.started_at == ready.ended_at

    limit = ctx.settings.heartbeat_interval_s * ctx.settings.heartbeat_misses
    await world.set(Robot, robot, last_heartbeat_at=ago(limit + 5))
    before = utcnow()
    await sweep_heartbeats(ctx)
    assert (await world.get(Robot, robot)).status == RobotStatus.DISCONNECTED
    rows = await _history(world, robot)
    assert [r.status for r in rows] == [RobotStatus.READY, RobotStatus.WORKING]
    assert rows[-1].ended_at is not None and rows[-1].ended_at >= before
