"""The event outbox and its relay: changes become events in their transaction, and reach the stream
once each, whatever fails in between (issue 13)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from rpa_common import jobflow
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import AccessFolder, EventOutbox, Process
from rpa_common.models.base import utcnow
from rpa_common.models.enums import ActorType, JobSource, JobState
from rpa_common.service import ServiceContext
from rpa_scheduler.relay import ensure_stream, relay_pass
from tests.events.jetstream import JetStreamServer, connect, stored
from tests.scheduler.factory import World, new_world

S = JobState


@pytest.fixture
async def jetstream() -> AsyncIterator[JetStreamServer]:
    server = JetStreamServer()
    server.start()
    yield server
    server.close()


async def _folder_world(ctx: ServiceContext) -> tuple[World, uuid.UUID]:
    world = await new_world(ctx)
    folder_id = uuid.uuid4()

    async def work(session):  # type: ignore[no-untyped-def]
        session.add(AccessFolder(id=folder_id, account_id=world.account_id, name=f"f-{folder_id.hex[:8]}"))
        await session.flush()
        await session.execute(
            sa.update(Process).where(Process.id == world.process_id).values(folder_id=folder_id)
        )

    await run_in_transaction(ctx.sessions, work)
    return world, folder_id


async def _job_and_steps(ctx: ServiceContext, world: World, robot: uuid.UUID) -> uuid.UUID:
    actor = jobflow.Actor(ActorType.ROBOT, robot)

    async def create(session):  # type: ignore[no-untyped-def]
        return await jobflow.create_job(
            session,
            account_id=world.account_id,
            process_id=world.process_id,
            process_version_id=world.version_id,
            robot_id=robot,
            source=JobSource.API,
            actor=actor,
            reason=None,
        )

    job = await run_in_transaction(ctx.sessions, create)
    for to in (S.STARTING, S.RUNNING, S.SUCCESSFUL):

        async def step(session, to=to):  # type: ignore[no-untyped-def]
            assert await jobflow.transition(session, job.id, to, actor=actor) is not None

        await run_in_transaction(ctx.sessions, step)
    return job.id


async def _outbox_of(ctx: ServiceContext, account_id: uuid.UUID) -> list[EventOutbox]:
    async with ctx.sessions() as session:
        rows = await session.execute(
            sa.select(EventOutbox).where(EventOutbox.account_id == account_id).order_by(EventOutbox.id)
        )
        return list(rows.scalars())


async def _relay_all(ctx: ServiceContext, nc) -> int:  # type: ignore[no-untyped-def]
    total = 0
    while True:
        async with ctx.sessions() as session, session.begin():
            n = await relay_pass(session, nc, 500)
        total += n
        if n < 500:
            return total


async def test_job_changes_reach_the_stream_in_order_with_their_folder(
    ctx: ServiceContext, jetstream: JetStreamServer
) -> None:
    world, folder_id = await _folder_world(ctx)
    robot = await world.robot()
    job_id = await _job_and_steps(ctx, world, robot)
    rows = await _outbox_of(ctx, world.account_id)
    assert [r.type for r in rows] == ["job.created", "job.state", "job.state", "job.state"]

    nc = await connect(jetstream.url)
    try:
        await ensure_stream(nc, 3600)
        await ensure_stream(nc, 7200)  # idempotent, and follows the settings
        info = await nc.jetstream().stream_info("RPA_EVENTS")
        assert info.config.max_age == 7200
        await _relay_all(ctx, nc)
        assert await _outbox_of(ctx, world.account_id) == []
        seen = await stored(nc, world.account_id)
    finally:
        await nc.close()
    assert [e["type"] for _, e in seen] == ["job.created", "job.state", "job.state", "job.state"]
    assert [e["data"].get("to_state") for _, e in seen[1:]] == ["Starting", "Running", "Successful"]
    assert {e["object_id"] for _, e in seen} == {str(job_id)}
    assert {e["folder_id"] for _, e in seen} == {str(folder_id)}
    sequences = [seq for seq, _ in seen]
    assert sequences == sorted(sequences)


async def test_nats_down_at_commit_the_event_waits_in_the_outbox(
    ctx: ServiceContext, jetstream: JetStreamServer
) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    nc = await connect(jetstream.url)
    try:
        await ensure_stream(nc, 3600)
        jetstream.stop()  # NATS goes away; the change commits anyway
        await _job_and_steps(ctx, world, robot)
        async with ctx.sessions() as session, session.begin():
            assert await relay_pass(session, nc, 500) == 0
        assert len(await _outbox_of(ctx, world.account_id)) == 4
        jetstream.start()  # NATS is back (same store): the relay delivers what waited
        await nc.flush(timeout=10)
        await _relay_all(ctx, nc)
        seen = await stored(nc, world.account_id)
    finally:
        await nc.close()
    assert [e["type"] for _, e in seen] == ["job.created", "job.state", "job.state", "job.state"]
    assert await _outbox_of(ctx, world.account_id) == []


async def test_a_relay_killed_after_publishing_leaves_no_gap_and_no_duplicate(
    ctx: ServiceContext, jetstream: JetStreamServer
) -> None:
    world = await new_world(ctx)
    robot = await world.robot()
    await _job_and_steps(ctx, world, robot)
    nc = await connect(jetstream.url)
    try:
        await ensure_stream(nc, 3600)
        # The relay publishes, then dies before its commit: the transaction rolls back, rows stay.
        async with ctx.sessions() as session:
            await session.begin()
            assert await relay_pass(session, nc, 500) >= 4
            await session.rollback()
        assert len(await _outbox_of(ctx, world.account_id)) == 4
        # The next relay (another replica) publishes them again: the stream keeps one of each.
        await _relay_all(ctx, nc)
        seen = await stored(nc, world.account_id)
    finally:
        await nc.close()
    assert [e["type"] for _, e in seen] == ["job.created", "job.state", "job.state", "job.state"]
    assert await _outbox_of(ctx, world.account_id) == []


async def test_a_status_change_is_an_event_and_a_heartbeat_is_not(ctx: ServiceContext) -> None:
    from rpa_common import robot_history
    from rpa_common.models.base import utcnow
    from rpa_common.models.enums import RobotStatus

    world = await new_world(ctx)
    robot = await world.robot()

    async def work(session):  # type: ignore[no-untyped-def]
        await robot_history.status_changed(
            session, account_id=world.account_id, robot_id=robot, status=RobotStatus.WORKING, at=utcnow()
        )
        await robot_history.disconnected(session, [robot], utcnow())

    await run_in_transaction(ctx.sessions, work)
    rows = await _outbox_of(ctx, world.account_id)
    assert [(r.type, r.object_id, r.data["status"]) for r in rows] == [
        ("robot.status", robot, "Working"),
        ("robot.status", robot, "Disconnected"),
    ]


async def test_a_row_id_counted_again_is_a_new_event_not_a_duplicate(
    ctx: ServiceContext, jetstream: JetStreamServer
) -> None:
    """A database restored from a backup counts its outbox ids again (and test databases sharing one
    NATS count the same ids): a new row with a used id must still reach the stream."""
    from datetime import timedelta

    world = await new_world(ctx)
    robot = await world.robot()
    await _job_and_steps(ctx, world, robot)
    reused = (await _outbox_of(ctx, world.account_id))[0]
    nc = await connect(jetstream.url)
    try:
        await ensure_stream(nc, 3600)
        await _relay_all(ctx, nc)

        async def again(session):  # type: ignore[no-untyped-def]
            session.add(
                EventOutbox(
                    id=reused.id,
                    type="robot.status",
                    account_id=world.account_id,
                    folder_id=None,
                    object_id=robot,
                    at=reused.at + timedelta(seconds=5),
                    data={"status": "Ready"},
                )
            )

        await run_in_transaction(ctx.sessions, again)
        await _relay_all(ctx, nc)
        seen = await stored(nc, world.account_id)
    finally:
        await nc.close()
    assert [e["type"] for _, e in seen] == [
        "job.created",
        "job.state",
        "job.state",
        "job.state",
        "robot.status",
    ]


async def test_a_batch_is_published_at_once_in_order_on_one_reply_subscription(
    ctx: ServiceContext, jetstream: JetStreamServer
) -> None:
    """A pass publishes its whole batch and then awaits the acks: 300 events in three passes arrive
    in their order, and passes after the first add no NATS subscription (one reply inbox)."""
    from datetime import timedelta

    world = await new_world(ctx)
    robot = await world.robot()
    base = utcnow()

    async def add(session):  # type: ignore[no-untyped-def]
        session.add_all(
            EventOutbox(
                type="robot.status",
                account_id=world.account_id,
                folder_id=None,
                object_id=robot,
                at=base + timedelta(milliseconds=i),
                data={"status": "Ready", "n": i},
            )
            for i in range(300)
        )

    await run_in_transaction(ctx.sessions, add)
    nc = await connect(jetstream.url)
    try:
        await ensure_stream(nc, 3600)
        subscriptions = []
        while await _outbox_of(ctx, world.account_id):
            async with ctx.sessions() as session, session.begin():
                assert await relay_pass(session, nc, 100) > 0
            subscriptions.append(len(nc._subs))
        seen = await stored(nc, world.account_id)
    finally:
        await nc.close()
    numbered = [e["data"]["n"] for _, e in seen if "n" in e["data"]]
    assert numbered == list(range(300))
    assert len(subscriptions) >= 3 and len(set(subscriptions)) == 1, subscriptions
