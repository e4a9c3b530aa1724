"""End to end: a job for an unattended robot that is not connected runs on the REAL reference robot.

Scheduler (in this process) -> OpenSession -> coordinator (in this process) -> ``python -m rpa_robot
run --unattended --exit-after-job`` as a real child process, key in its environment -> a real gateway
process -> the job runs (examples/hello) -> the robot leaves -> the session is closed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Job, JobEvent, TerminalSession
from rpa_common.models.enums import JobState, RobotRole, RobotStatus, SessionState
from rpa_common.service import ServiceContext
from rpa_coordinator.coordinator import Coordinator
from rpa_coordinator.drivers import ProcessDriver
from rpa_scheduler.service import Scheduler
from tests.conftest import NATS_URL, ROOT
from tests.scheduler.factory import World, new_world
from tests.support import add_current_version, package_of

pytestmark = pytest.mark.slow


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def gateway_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPA_")}
    env.update(
        RPA_DB_URL=db_url,
        RPA_NATS_URL=NATS_URL,
        RPA_ENVIRONMENT="test",
        RPA_GATEWAY_PORT=str(port),
        RPA_DB_POOL_SIZE="5",
    )
    log = open(tmp_path / "gateway.log", "wb")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "rpa_gateway", "serve"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    log.close()
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "gateway not ready"
            time.sleep(0.1)
        yield f"ws://127.0.0.1:{port}/robot/v1"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def publish_hello(world: World, example: str = "hello") -> None:
    """examples/<example> (hello by default) as the current version of the world's process."""
    folder = Path(ROOT) / "examples" / example
    data, manifest = package_of(folder)
    version_id = uuid.uuid4()

    async def work(session):  # type: ignore[no-untyped-def]
        await add_current_version(
            session,
            account_id=world.account_id,
            process_id=world.process_id,
            version_id=version_id,
            version=f"2.0.0-{example}",
            data=data,
            manifest=manifest,
        )

    await run_in_transaction(world.ctx.sessions, work)
    world.version_id = version_id


async def test_unattended_job_opens_a_session_runs_on_the_real_robot_and_closes_it(
    ctx: ServiceContext, gateway_url: str, tmp_path: Path
) -> None:
    world = await new_world(ctx)
    await publish_hello(world)
    coordinator_id = await world.robot(role=RobotRole.COORDINATOR, status=RobotStatus.DISCONNECTED)
    server = await world.terminal_server(coordinator_id)
    bot = await world.robot(role=RobotRole.UNATTENDED, status=RobotStatus.DISCONNECTED)
    await world.unattended_account(server, bot, "svc_e2e_robot", "Pa55word!")

    scheduler = Scheduler(ctx, triggers=False, sweeps=False, queue=f"test-{uuid.uuid4().hex[:8]}")
    coordinator = Coordinator(
        ctx, coordinator_id, ProcessDriver(str(tmp_path / "coord")), gateway_url=gateway_url
    )
    await scheduler.start()
    await coordinator.start()
    try:
        job_id = await world.job(robot_id=bot, input_args={"name": "session", "count": 2})
        scheduler.wake.set()
        async with asyncio.timeout(60):
            while (job := await world.get(Job, job_id)).state not in (JobState.SUCCESSFUL, JobState.FAILED):
                await asyncio.sleep(0.1)
        log_files = list((tmp_path / "coord" / "sessions").glob("*/robot.log"))
        robot_output = log_files[0].read_text()[-3000:] if log_files else "(no robot log)"
        assert job.state == JobState.SUCCESSFUL, f"{job.error}\n{robot_output}"
        assert job.output_args == {"greeting": "Hello, session!", "lines": 2}
        # The robot logs off after its job: the session ends closed.
        async with asyncio.timeout(30):
            while True:
                async with ctx.sessions() as session:
                    ts = await session.scalar(
                        sa.select(TerminalSession).where(TerminalSession.job_id == job_id)
                    )
                if ts is not None and ts.state in (SessionState.ENDED, SessionState.FAILED):
                    break
                await asyncio.sleep(0.1)
        assert (ts.state, ts.reason) == (SessionState.ENDED, None), robot_output
        assert ts.opened_at is not None and ts.closed_at is not None
        async with ctx.sessions() as session:
            states = (
                (
                    await session.execute(
                        sa.select(JobEvent.to_state).where(JobEvent.job_id == job_id).order_by(JobEvent.at)
                    )
                )
                .scalars()
                .all()
            )
        assert states == [JobState.PENDING, JobState.STARTING, JobState.RUNNING, JobState.SUCCESSFUL]
        assert "Pa55word!" not in robot_output
    finally:
        await coordinator.stop()
        await scheduler.stop()
