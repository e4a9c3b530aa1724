"""Dispatch: Pending jobs reach free robots by priority then age, once, whatever runs concurrently."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from rpa_common.db.uow import run_in_transaction
from rpa_common.jobflow import Actor, transition
from rpa_common.models import Job, JobEvent, Robot, TerminalSession
from rpa_common.models.enums import JobPriority, JobState, RobotRole, RobotStatus, SessionState
from rpa_common.nats import subjects
from rpa_common.security import hash_key, key_matches
from rpa_common.service import ServiceContext
from rpa_scheduler.dispatch import dispatch_pass, dispatchable_jobs
from tests.scheduler.factory import World, ago, listen, new_world


async def finish(world: World, job_id: uuid.UUID) -> None:
    await run_in_transaction(
        world.ctx.sessions,
        lambda s: transition(s, job_id, JobState.SUCCESSFUL, actor=Actor.system(), reason="test"),
    )


def test_claim_renders_for_update_skip_locked_on_both_databases() -> None:
    stmt = dispatchable_jobs(16, {uuid.uuid4()})
    pg = str(stmt.compile(dialect=postgresql.asyncpg.dialect()))  # type: ignore[attr-defined]
    maria = mysql.aiomysql.dialect()  # type: ignore[attr-defined]
    maria.is_mariadb = True
    maria.server_version_info = (10, 11, 6)
    my = str(stmt.compile(dialect=maria))
    for sql in (pg, my):
        assert sql.rstrip().endswith("FOR UPDATE SKIP LOCKED"), sql
        assert "ORDER BY job.priority DESC, job.created_at ASC" in sql
    # Only job rows are locked: robot conditions are subqueries, not joins.
    assert " JOIN " not in pg.split("WHERE", 1)[0]


async def test_dispatch_takes_priority_then_age_and_offers_to_the_robots_gateway(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    low_old = await world.job(robot_id=robot, priority=JobPriority.LOW, created_at=ago(300))
    normal_old = await world.job(robot_id=robot, priority=JobPriority.NORMAL, created_at=ago(200))
    normal_new = await world.job(robot_id=robot, priority=JobPriority.NORMAL, created_at=ago(100))
    high_new = await world.job(robot_id=robot, priority=JobPriority.HIGH, created_at=ago(10))

    order = []
    async with listen(ctx, subjects.gateway_inbox(world.gateway_id)) as inbox:
        for _ in range(4):
            await dispatch_pass(ctx)
            starting = [j for j in await world.jobs() if j.state == JobState.STARTING]
            assert len(starting) == 1, "one robot: one job at a time"
            job = starting[0]
            assert job.robot_id == robot and job.attempt == 1 and job.lease_expires_at is not None
            offer = await inbox.wait_for(lambda m, j=job: m["job_id"] == str(j.id))
            payload = offer.pop("offer")
            assert offer == {"robot_id": str(robot), "kind": "offer", "job_id": str(job.id), "attempt": 1}
            # The offer travels with the command: the gateway needs no database read to start it.
            assert payload["job_id"] == str(job.id) and payload["attempt"] == 1
            assert payload["state"] == "Starting" and len(payload["sha256"]) == 64
            assert (await world.get(Robot, robot)).status == RobotStatus.WORKING
            order.append(job.id)
            await finish(world, job.id)
    assert order == [high_new, normal_old, normal_new, low_old]
    assert (await world.get(Robot, robot)).current_job_id is None


async def test_one_job_per_robot(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    first = await world.job(robot_id=robot, created_at=ago(2))
    second = await world.job(robot_id=robot)
    await dispatch_pass(ctx)
    await dispatch_pass(ctx)
    assert (await world.get(Job, first)).state == JobState.STARTING
    assert (await world.get(Job, second)).state == JobState.PENDING
    assert (await world.get(Robot, robot)).current_job_id == first


async def test_robot_that_cannot_work_gets_nothing(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    inactive = await world.robot(active=False)
    unlicensed = await world.robot(status=RobotStatus.UNLICENSED)
    attended_away = await world.robot(status=RobotStatus.DISCONNECTED)
    jobs = [await world.job(robot_id=r) for r in (inactive, unlicensed, attended_away)]
    await dispatch_pass(ctx)
    assert [(await world.get(Job, j)).state for j in jobs] == [JobState.PENDING] * 3
    # The attended robot connects: its job goes.
    await world.set(Robot, attended_away, status=RobotStatus.READY, gateway_id=world.gateway_id)
    await dispatch_pass(ctx)
    assert (await world.get(Job, jobs[2])).state == JobState.STARTING


async def test_group_job_goes_to_a_ready_member_only(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    busy = await world.robot("a-busy")
    inactive = await world.robot("b-inactive", active=False)
    away = await world.robot("c-away", status=RobotStatus.DISCONNECTED, role=RobotRole.UNATTENDED)
    unlicensed = await world.robot("d-unlicensed", status=RobotStatus.UNLICENSED)
    ready = await world.robot("e-ready")
    group = await world.group(busy, inactive, away, unlicensed, ready)
    busy_job = await world.job(robot_id=busy)
    await dispatch_pass(ctx)
    assert (await world.get(Robot, busy)).current_job_id == busy_job

    group_job = await world.job(group_id=group)
    await dispatch_pass(ctx)
    job = await world.get(Job, group_job)
    assert job.state == JobState.STARTING and job.robot_id == ready

    # No free member left: the next group job waits, then goes when a member is free again.
    waiting = await world.job(group_id=group)
    await dispatch_pass(ctx)
    assert (await world.get(Job, waiting)).state == JobState.PENDING
    await finish(world, busy_job)
    await dispatch_pass(ctx)
    job = await world.get(Job, waiting)
    assert job.state == JobState.STARTING and job.robot_id == busy


async def test_concurrent_dispatchers_never_double_assign(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    robots = [await world.robot() for _ in range(6)]
    group = await world.group(*robots[:4])
    jobs = []
    for i in range(24):
        if i % 3 == 0:
            jobs.append(await world.job(group_id=group))
        else:
            jobs.append(await world.job(robot_id=robots[i % len(robots)]))
    done = 0
    for _round in range(12):
        # Several dispatchers at once, each on its own session and connection.
        await asyncio.gather(*(dispatch_pass(ctx, limit=4) for _ in range(4)))
        state = await world.jobs()
        active = [j for j in state if j.state == JobState.STARTING]
        per_robot = Counter(j.robot_id for j in active)
        assert all(n == 1 for n in per_robot.values()), per_robot
        for r in robots:
            current = (await world.get(Robot, r)).current_job_id
            holders = [j.id for j in active if j.robot_id == r]
            assert current == (holders[0] if holders else None)
        # A dispatcher may skip a job whose robot another one holds locked: that costs a pass
        # (the loop wakes itself again), never a double assignment.
        assert active or done == len(jobs)
        for j in active:
            await finish(world, j.id)
        done += len(active)
    assert done == len(jobs)
    async with ctx.sessions() as session:
        starts = Counter(
            (
                await session.execute(
                    sa.select(JobEvent.job_id).where(
                        JobEvent.job_id.in_(jobs), JobEvent.to_state == JobState.STARTING
                    )
                )
            ).scalars()
        )
    assert set(starts) == set(jobs) and all(n == 1 for n in starts.values()), "each job started once"


async def test_unattended_robot_gets_a_session_from_its_coordinator(ctx: ServiceContext) -> None:
    world = await new_world(ctx)
    coordinator = await world.robot(role=RobotRole.COORDINATOR)
    server = await world.terminal_server(coordinator, max_sessions=1)
    bots = [await world.robot(role=RobotRole.UNATTENDED, status=RobotStatus.DISCONNECTED) for _ in range(2)]
    for i, bot in enumerate(bots):
        await world.unattended_account(server, bot, f"svc_bot{i}", f"s3cret-{i}")
    old_hash = (await world.get(Robot, bots[0])).key_hash
    first = await world.job(robot_id=bots[0], created_at=ago(5))
    second = await world.job(robot_id=bots[1])

    async with listen(ctx, subjects.coordinator_inbox(coordinator)) as inbox:
        await dispatch_pass(ctx)
        msg = await inbox.wait_for(lambda m: m["job_id"] == str(first))
    job = await world.get(Job, first)
    assert job.state == JobState.STARTING and job.robot_id == bots[0]
    # The password and the robot key travel sealed to the coordinator's public key only.
    secrets = world.opened(msg)
    assert "password" not in msg and "robot_key" not in msg and "s3cret-0" not in json.dumps(msg)
    assert (msg["login"], msg["domain"], secrets["password"]) == ("svc_bot0", "CORP", "s3cret-0")
    robot = await world.get(Robot, bots[0])
    assert robot.key_hash != old_hash and key_matches(secrets["robot_key"], robot.key_hash)
    assert secrets["robot_key"].startswith(f"rbk_{robot.key_prefix}_")
    assert robot.key_prefix not in json.dumps(msg)
    async with ctx.sessions() as session:
        sessions = (
            (
                await session.execute(
                    sa.select(TerminalSession).where(TerminalSession.terminal_server_id == server)
                )
            )
            .scalars()
            .all()
        )
    assert [(s.id, s.job_id, s.state) for s in sessions] == [
        (uuid.UUID(msg["session_id"]), first, SessionState.REQUESTED)
    ]
    # max_sessions = 1: the second robot waits for the seat.
    assert (await world.get(Job, second)).state == JobState.PENDING
    assert hash_key(world.opened(msg)["robot_key"]) == robot.key_hash
