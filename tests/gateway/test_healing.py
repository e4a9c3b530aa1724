"""The gateway heals what lost NATS messages break, and applies frames by group commit.

- A job claimed for a connected robot whose offer never went out (published into a NATS outage)
  reaches the robot by the gateway's reconciliation, within seconds; its lease is not renewed by
  heartbeats until the robot confirms the job, then it is.
- A job ended behind the robot's back whose ``JOB_STATE`` never came is interrupted on the robot.
- What the gateway publishes while NATS is down is logged at warning and sent once NATS is back.
- The writer applies the frames of many connections in few transactions, and a frame that is bad
  in itself fails alone with its error, while the others of its batch are applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.db.uow import run_in_transaction
from rpa_common.jobflow import Actor, transition
from rpa_common.models import Robot, RobotMessage
from rpa_common.models.enums import JobState, RobotStatus
from rpa_common.nats import subjects
from rpa_common.nats.messages import JobStateChanged
from rpa_gateway import store
from rpa_gateway.writer import FrameWriter, Source
from rpa_protocol import Ack, Heartbeat, JobInterrupt, JobStart, JobStatus, LogBatch, LogEntry, encode
from tests.gateway.conftest import GatewayProcess, World, assign, job_row, robot_row, wait_robot
from tests.gateway.test_protocol import open_robot, recv
from tests.support import eventually, free_port


async def beat_until(ws: object, kind: type, within_s: float) -> object:
    """Heartbeat every 0.25 s (a live robot) until a frame of ``kind`` arrives."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        await ws.send(encode(Heartbeat()))  # type: ignore[attr-defined]
        try:
            return await recv(ws, kind, timeout=0.25)  # type: ignore[arg-type]
        except TimeoutError:
            continue
    raise AssertionError(f"no {kind.__name__} within {within_s} s")


async def beat_for(ws: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await ws.send(encode(Heartbeat()))  # type: ignore[attr-defined]
        await asyncio.sleep(0.25)


async def test_a_lost_offer_reaches_the_robot_and_its_lease_waits_for_confirmation(
    gateway: GatewayProcess, world: World
) -> None:
    robot_id, key = await world.robot()
    job_id = await world.job("hello", robot_id)
    ws, _ = await open_robot(gateway, key)
    # The claim is committed (Starting, this robot, a lease) but the offer is never published.
    claimed_at = time.monotonic()
    attempt = await assign(world.ctx, job_id, robot_id, publish=False)
    lease = (await job_row(world.ctx, job_id)).lease_expires_at
    start = await beat_until(ws, JobStart, within_s=6)
    assert isinstance(start, JobStart)
    assert start.job_id == job_id and start.attempt == attempt and start.state == "Starting"
    assert time.monotonic() - claimed_at < 6
    # Heartbeats keep coming (and are recorded), but the robot has not confirmed the job: the
    # lease stays what the dispatcher gave it, so an offer that never arrives cannot hold it forever.
    before = (await robot_row(world.ctx, robot_id)).last_heartbeat_at
    await beat_for(ws, 1.5)
    assert (await robot_row(world.ctx, robot_id)).last_heartbeat_at > before  # type: ignore[operator]
    assert (await job_row(world.ctx, job_id)).lease_expires_at == lease
    # Confirmed (Starting -> Running): from now on heartbeats renew it.
    await ws.send(encode(JobStatus(seq=1, job_id=job_id, attempt=attempt, status="running")))
    await recv(ws, Ack)
    confirmed = (await job_row(world.ctx, job_id)).lease_expires_at
    assert confirmed is not None and confirmed != lease  # now + the gateway's job_lease_s
    await beat_for(ws, 1.5)
    renewed = (await job_row(world.ctx, job_id)).lease_expires_at
    assert renewed is not None and renewed > confirmed
    # The offer is sent once per connection, not on every round.
    await ws.send(encode(Heartbeat()))
    try:
        again = await recv(ws, JobStart, timeout=2.5)
    except TimeoutError:
        again = None
    assert again is None
    await ws.close()


async def test_a_job_ended_without_the_robot_hearing_is_interrupted_on_it(
    gateway: GatewayProcess, world: World
) -> None:
    robot_id, key = await world.robot()
    job_id = await world.job("hello", robot_id)
    ws, _ = await open_robot(gateway, key)
    attempt = await assign(world.ctx, job_id, robot_id)
    await recv(ws, JobStart)
    await wait_robot(world.ctx, robot_id, RobotStatus.WORKING, timeout=5)

    # Someone else ends it (a sweep, a person) and its JOB_STATE message is lost.
    async def end(session: AsyncSession) -> None:
        t = await transition(session, job_id, JobState.FAILED, actor=Actor.system(), reason="test")
        assert t is not None
        await session.execute(sa.update(Robot).where(Robot.id == robot_id).values(current_job_id=None))

    await run_in_transaction(world.ctx.sessions, end)
    interrupt = await beat_until(ws, JobInterrupt, within_s=6)
    assert isinstance(interrupt, JobInterrupt)
    assert interrupt.job_id == job_id and interrupt.attempt == attempt and interrupt.reason == "job ended"
    await wait_robot(world.ctx, robot_id, RobotStatus.READY, timeout=5)
    await ws.close()


async def test_group_commit_applies_many_connections_frames_and_isolates_a_bad_one(world: World) -> None:
    robots = [await world.robot() for _ in range(12)]
    ctx = world.ctx
    writer = FrameWriter(ctx)
    writer.start()
    now = datetime.now(UTC)
    try:
        sources = [
            Source(store.RobotIdentity(rid, world.account_id, "r", True), uuid.uuid4(), False, False)
            for rid, _ in robots
        ]
        frames = [
            LogBatch(seq=1, entries=[LogEntry(id=uuid.uuid4(), message=f"line {n}", at=now)])
            for n in range(len(robots))
        ]
        # A frame no validation refused but the gateway cannot apply (level unknown to the store):
        # it alone is rejected; the frames sharing its transaction are stored.
        bad_entry = LogEntry.model_construct(id=uuid.uuid4(), level="Loud", message="x", at=now, job_id=None)
        frames[5] = LogBatch.model_construct(type="log", seq=1, entries=[bad_entry])
        results = await asyncio.gather(*(writer.apply(s, f) for s, f in zip(sources, frames, strict=True)))
    finally:
        await writer.stop()
    assert results[5].rejected is not None
    assert all(r.rejected is None for n, r in enumerate(results) if n != 5)
    assert writer.frames == len(robots) and writer.batches < len(robots) // 2, (writer.batches, writer.frames)
    async with ctx.sessions() as session:
        seqs = dict(
            (
                await session.execute(
                    sa.select(Robot.id, Robot.inbound_seq).where(Robot.id.in_([r for r, _ in robots]))
                )
            ).all()
        )
        stored = (
            await session.execute(
                sa.select(sa.func.count())
                .select_from(RobotMessage)
                .where(RobotMessage.robot_id.in_([r for r, _ in robots]))
            )
        ).scalar_one()
    assert stored == len(robots) - 1
    assert [seqs[r] for r, _ in robots] == [0 if n == 5 else 1 for n in range(len(robots))]


class NatsServer:
    """A NATS server of this test's own, to stop and start again on the same port."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "nats-server"), "-a", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise AssertionError("nats-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def test_publishes_made_while_nats_is_down_are_sent_when_it_is_back(
    db_url: str, world: World, tmp_path: Path
) -> None:
    server = NatsServer(tmp_path / "nats.log")
    server.start()
    gateway = GatewayProcess(db_url, tmp_path / "gateway.log", nats_url=server.url)
    listener = None
    try:
        await asyncio.to_thread(gateway.start)
        robot_id, key = await world.robot()
        job_id = await world.job("hello", robot_id)
        ws, _ = await open_robot(gateway, key)
        attempt = await assign(world.ctx, job_id, robot_id, publish=False)  # NATS plays no part
        await beat_until(ws, JobStart, within_s=6)
        await ws.send(encode(JobStatus(seq=1, job_id=job_id, attempt=attempt, status="running")))
        await recv(ws, Ack)
        # A listener that reconnects faster than the gateway, so it is back before the replay.
        seen: list[JobStateChanged] = []

        async def on_state(msg: Any) -> None:
            seen.append(JobStateChanged.decode(msg.data))

        listener = await nats.connect(
            server.url, reconnect_time_wait=0.05, max_reconnect_attempts=-1, allow_reconnect=True
        )
        await listener.subscribe(subjects.JOB_STATE, cb=on_state)
        await listener.flush()

        await asyncio.to_thread(server.stop)
        await asyncio.sleep(1.0)  # the gateway notices the outage
        # The job ends during the outage: stored and acknowledged; its JOB_STATE waits in the gateway.
        await ws.send(encode(JobStatus(seq=2, job_id=job_id, attempt=attempt, status="successful")))
        assert (await recv(ws, Ack)).seq == 2
        assert (await job_row(world.ctx, job_id)).state == JobState.SUCCESSFUL
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.start)

        async def delivered() -> bool:
            return any(m.job_id == job_id and m.to_state == JobState.SUCCESSFUL for m in seen)

        await eventually(delivered, 15, "JOB_STATE published after NATS came back")
        log_text = gateway.log_path.read_text()
        assert "nats.publish_failed" in log_text and '"level": "warning"' in log_text
        await ws.close()
    finally:
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.close()
        gateway.kill()
        server.stop()
