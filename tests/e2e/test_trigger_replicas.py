"""Two REAL scheduler processes share a per-second trigger: exactly one job per second, no gap.

Half-way through one replica is killed (SIGKILL, no goodbye): the other has fired every occurrence
all along (each replica fires everything, insert-or-ignore picks one job), so nothing is lost and
nothing is doubled. ``make test`` runs it for ``RPA_TRIGGER_REPLICAS_S`` seconds (20 by default);
``make triggers-test`` (called by ``.ci/run``) runs the full 3 minutes.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Job, Trigger, TriggerFire
from rpa_common.models.enums import JobState, MisfirePolicy, TriggerKind
from rpa_common.service import ServiceContext
from tests.e2e.conftest import Stack
from tests.scheduler.factory import new_world

DURATION_S = float(os.environ.get("RPA_TRIGGER_REPLICAS_S", "20"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(int(DURATION_S) + 240)]


async def test_two_replicas_one_job_per_second_and_a_kill_leaves_no_gap(
    ctx: ServiceContext, stack: Stack
) -> None:
    world = await new_world(ctx)
    robot = await world.robot(active=False)  # the jobs stay Pending: only their creation is tested
    trigger_id = uuid.uuid4()

    async def add(session: Any) -> None:
        session.add(
            Trigger(
                id=trigger_id,
                account_id=world.account_id,
                name=f"every-second-{trigger_id.hex[:6]}",
                kind=TriggerKind.SCHEDULE,
                process_id=world.process_id,
                robot_id=robot,
                cron="* * * * * *",
                time_zone="UTC",
                misfire_policy=MisfirePolicy.FIRE_ONCE,
                misfire_grace_s=30,
            )
        )

    await run_in_transaction(ctx.sessions, add)
    a = stack.service("scheduler", name="scheduler-a")
    b = stack.service("scheduler", name="scheduler-b")
    await stack.start(a, b)
    started = datetime.now(UTC)
    await asyncio.sleep(DURATION_S / 2)
    a.kill()
    killed = datetime.now(UTC)
    t0 = time.monotonic()
    await asyncio.sleep(DURATION_S / 2)
    stopped = datetime.now(UTC)
    await asyncio.to_thread(b.stop)
    assert time.monotonic() - t0 >= DURATION_S / 2

    async with ctx.sessions() as session:
        fires = (
            (await session.execute(sa.select(TriggerFire).where(TriggerFire.trigger_id == trigger_id)))
            .scalars()
            .all()
        )
        jobs = (await session.execute(sa.select(Job).where(Job.trigger_id == trigger_id))).scalars().all()
    keys = sorted(datetime.fromisoformat(f.fire_key) for f in fires)
    assert keys, stack.report()
    # Exactly one job per occurrence, every job of this trigger belongs to one occurrence.
    assert all(f.job_id is not None and f.result == "created" for f in fires)
    assert sorted(str(f.job_id) for f in fires) == sorted(str(j.id) for j in jobs)
    assert all(j.state == JobState.PENDING for j in jobs)
    # One per second, no gap from the first to the last, across the kill.
    gaps = [(x, y) for x, y in itertools.pairwise(keys) if y - x != timedelta(seconds=1)]
    assert not gaps, gaps
    assert keys[0] <= killed - timedelta(seconds=2), (started, keys[0], killed)
    assert keys[-1] >= stopped - timedelta(seconds=5), (keys[-1], stopped)
    assert len(keys) >= DURATION_S - 15, (len(keys), DURATION_S)
    # Each scheduled time made its job within the on-time tolerance (nothing caught up late).
    lags = sorted((f.fired_at - f.scheduled_at).total_seconds() for f in fires if f.scheduled_at is not None)
    assert lags[-1] < 10, lags[-5:]
    print(
        f"\n{len(keys)} occurrences from {keys[0]:%H:%M:%S} to {keys[-1]:%H:%M:%S}, killed at {killed:%H:%M:%S}; "
        f"fire lag median {lags[len(lags) // 2]:.3f} s, max {lags[-1]:.3f} s"
    )
