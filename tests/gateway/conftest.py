"""Fixtures for the gateway tests: a REAL gateway process, REAL robot processes, and the few
database writes that stand in for the API and the dispatcher (which are tested elsewhere).

``assign`` does what the dispatcher does (docs/design/dispatch.md): Pending -> Starting with the
robot, the next attempt and a lease, ``robot.current_job_id`` set by a guarded update, then a
``GatewayCommand(offer)`` to the inbox of the gateway holding the robot.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.db.uow import run_in_transaction
from rpa_common.jobflow import Actor, record_creation, transition
from rpa_common.models import Account, Job, JobEvent, Process, Robot, RobotMessage
from rpa_common.models.base import utcnow
from rpa_common.models.enums import JobState, RobotRole, RobotStatus
from rpa_common.nats import subjects
from rpa_common.nats.messages import GatewayCommand, JobControl
from rpa_common.security import make_key
from rpa_common.service import ServiceContext
from tests.conftest import NATS_URL, ROOT
from tests.support import add_current_version, eventually, free_port, package_of, robot_argv

T = TypeVar("T")
HEARTBEAT_S = 0.5
EXAMPLES = Path(ROOT) / "examples"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPA_")}
    env.update(extra)
    return env


class GatewayProcess:
    """``python -m rpa_gateway serve`` on a port of its own."""

    def __init__(
        self,
        db_url: str,
        log_path: Path,
        port: int | None = None,
        nats_url: str = NATS_URL,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.extra_env = extra_env or {}
        self.db_url = db_url
        self.nats_url = nats_url
        self.port = port or free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/robot/v1"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rpa_gateway", "serve"],
            cwd=ROOT,
            env=_env(
                RPA_DB_URL=self.db_url,
                RPA_NATS_URL=self.nats_url,
                RPA_ENVIRONMENT="test",
                RPA_GATEWAY_PORT=str(self.port),
                RPA_HEARTBEAT_INTERVAL_S=str(HEARTBEAT_S),
                RPA_JOB_LEASE_S="30",
                RPA_DB_POOL_SIZE="5",
                RPA_LOG_JSON="true",
                **self.extra_env,
            ),
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.http_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("gateway not ready in 30 s")

    def kill(self) -> None:
        """A crash: no goodbye to anyone."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="session")
def gateway(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(db_url, tmp_path_factory.mktemp("gateway") / "gateway.log")
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def gateway_factory(db_url: str, tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Gateways of a test's own (to kill and restart them), with settings of its own if asked."""
    made: list[GatewayProcess] = []

    def make(**env: str) -> GatewayProcess:
        gw = GatewayProcess(db_url, tmp_path / f"gateway-{len(made)}.log", extra_env=env)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.stop()


class RobotProcess:
    """``python -m rpa_robot run ...``: the reference robot, as a separate product would run."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def start_robot(tmp_path: Path) -> Iterator[Callable[..., RobotProcess]]:
    started: list[RobotProcess] = []

    def start(gateway_url: str, key: str, *extra: str, name: str = "robot") -> RobotProcess:
        home = tmp_path / name
        log_path = tmp_path / f"{name}-{len(started)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                robot_argv(gateway_url, home, *extra),
                cwd=ROOT,
                env=_env(RPA_ROBOT_KEY=key),
                stdout=log,
                stderr=log,
            )
        robot = RobotProcess(proc, log_path)
        started.append(robot)
        return robot

    yield start
    for robot in started:
        robot.stop()


# Database stand-ins for the API and the dispatcher -------------------------------------------------


@dataclass
class World:
    """An account of its own, with what the tests put in it."""

    ctx: ServiceContext
    account_id: uuid.UUID
    versions: dict[str, tuple[uuid.UUID, uuid.UUID]] = field(default_factory=dict)

    async def robot(self, *, active: bool = True, name: str | None = None) -> tuple[uuid.UUID, str]:
        """A robot and its key (as the API shows it once)."""
        key = make_key("rbk")
        robot_id = uuid.uuid4()

        async def work(session: AsyncSession) -> None:
            session.add(
                Robot(
                    id=robot_id,
                    account_id=self.account_id,
                    name=name or f"robot-{robot_id.hex[:8]}",
                    role=RobotRole.UNATTENDED,
                    is_active=active,
                    key_prefix=key.prefix,
                    key_hash=key.hash,
                )
            )

        await run_in_transaction(self.ctx.sessions, work)
        return robot_id, key.full

    async def publish(self, example: str) -> tuple[uuid.UUID, uuid.UUID]:
        """Publish ``examples/<example>`` (zipped) as the current version of a process (a name
        not found there: ``tests/gateway/packages/<example>``, packages made for tests)."""
        if example in self.versions:
            return self.versions[example]
        folder = EXAMPLES / example
        if not folder.is_dir():
            folder = Path(__file__).parent / "packages" / example
        data, manifest = package_of(folder)
        process_id, version_id = uuid.uuid4(), uuid.uuid4()

        async def work(session: AsyncSession) -> None:
            session.add(Process(id=process_id, account_id=self.account_id, name=manifest["name"]))
            await session.flush()
            await add_current_version(
                session,
                account_id=self.account_id,
                process_id=process_id,
                version_id=version_id,
                version=manifest["version"],
                data=data,
                manifest=manifest,
                default_input=manifest.get("default_input"),
            )

        await run_in_transaction(self.ctx.sessions, work)
        self.versions[example] = (process_id, version_id)
        return process_id, version_id

    async def job(
        self, example: str, robot_id: uuid.UUID, input_args: dict[str, Any] | None = None
    ) -> uuid.UUID:
        """A Pending job for ``robot_id`` (as the API creates it)."""
        process_id, version_id = await self.publish(example)
        job_id = uuid.uuid4()

        async def work(session: AsyncSession) -> None:
            job = Job(
                id=job_id,
                account_id=self.account_id,
                process_id=process_id,
                process_version_id=version_id,
                robot_id=robot_id,
                input_args=input_args or {},
                created_at=utcnow(),
            )
            session.add(job)
            await session.flush()
            record_creation(session, job, Actor.system())

        await run_in_transaction(self.ctx.sessions, work)
        return job_id

    async def control(self, job_id: uuid.UUID, command: str) -> None:
        """What ``POST /jobs/{id}/stop|interrupt`` does: the transition, then ``JOB_CONTROL``."""
        to_state = JobState.STOPPING if command == "stop" else JobState.INTERRUPTING

        async def work(session: AsyncSession) -> tuple[uuid.UUID | None, int]:
            t = await transition(session, job_id, to_state, actor=Actor.system(), reason=f"test {command}")
            assert t is not None, f"job could not go {to_state}"
            return t.robot_id, t.attempt

        robot_id, attempt = await run_in_transaction(self.ctx.sessions, work)
        msg = JobControl(
            account_id=self.account_id,
            job_id=job_id,
            robot_id=robot_id,
            attempt=attempt,
            command=command,  # type: ignore[arg-type]
        )
        await self.ctx.publish(subjects.JOB_CONTROL, msg.encode())


async def assign(ctx: ServiceContext, job_id: uuid.UUID, robot_id: uuid.UUID, *, publish: bool = True) -> int:
    """Dispatch ``job_id`` to ``robot_id`` exactly as the dispatcher would; returns the attempt.

    ``publish=False``: the claim is committed but the offer is lost (as into a NATS outage)."""

    async def work(session: AsyncSession) -> tuple[int, str | None]:
        robot = (await session.execute(sa.select(Robot).where(Robot.id == robot_id))).scalar_one()
        attempt = (
            int((await session.execute(sa.select(Job.attempt).where(Job.id == job_id))).scalar_one()) + 1
        )
        t = await transition(
            session,
            job_id,
            JobState.STARTING,
            expected=[JobState.PENDING],
            actor=Actor.system(),
            reason="dispatched",
            values={
                "robot_id": robot_id,
                "attempt": attempt,
                "lease_expires_at": utcnow() + timedelta(seconds=ctx.settings.job_lease_s),
            },
        )
        assert t is not None
        taken = await session.execute(
            sa.update(Robot)
            .where(Robot.id == robot_id, Robot.current_job_id.is_(None))
            .values(current_job_id=job_id)
        )
        assert taken.rowcount == 1, "robot is busy"  # type: ignore[attr-defined]
        return attempt, robot.gateway_id

    attempt, gateway_id = await run_in_transaction(ctx.sessions, work)
    assert gateway_id, "the robot is not connected"
    if not publish:
        return attempt
    cmd = GatewayCommand(robot_id=robot_id, kind="offer", job_id=job_id, attempt=attempt)
    await ctx.publish(subjects.gateway_inbox(gateway_id), cmd.encode())
    return attempt


@pytest.fixture
async def world(ctx: ServiceContext) -> World:
    account_id = uuid.uuid4()

    async def work(session: AsyncSession) -> None:
        session.add(Account(id=account_id, name=f"gw-{account_id.hex[:12]}"))

    await run_in_transaction(ctx.sessions, work)
    return World(ctx, account_id)


# Waiting and reading -----------------------------------------------------------------------------


async def job_row(ctx: ServiceContext, job_id: uuid.UUID) -> Job:
    async with ctx.sessions() as session:
        return (await session.execute(sa.select(Job).where(Job.id == job_id))).scalar_one()


async def robot_row(ctx: ServiceContext, robot_id: uuid.UUID) -> Robot:
    async with ctx.sessions() as session:
        return (await session.execute(sa.select(Robot).where(Robot.id == robot_id))).scalar_one()


async def wait_job(ctx: ServiceContext, job_id: uuid.UUID, *states: JobState, timeout: float = 20) -> Job:
    async def check() -> Job | None:
        job = await job_row(ctx, job_id)
        return job if job.state in states else None

    try:
        return await eventually(check, timeout, f"job in {states}")
    except AssertionError:
        job = await job_row(ctx, job_id)
        raise AssertionError(f"job is {job.state} (error {job.error!r}), expected {states}") from None


async def wait_robot(
    ctx: ServiceContext, robot_id: uuid.UUID, status: RobotStatus, timeout: float = 15
) -> Robot:
    async def check() -> Robot | None:
        robot = await robot_row(ctx, robot_id)
        return robot if robot.status == status else None

    return await eventually(check, timeout, f"robot {status}")


async def events(ctx: ServiceContext, job_id: uuid.UUID) -> list[tuple[JobState | None, JobState]]:
    async with ctx.sessions() as session:
        rows = await session.execute(
            sa.select(JobEvent.from_state, JobEvent.to_state)
            .where(JobEvent.job_id == job_id)
            .order_by(JobEvent.at)
        )
        return [(r.from_state, r.to_state) for r in rows]


async def messages(ctx: ServiceContext, job_id: uuid.UUID) -> list[RobotMessage]:
    async with ctx.sessions() as session:
        rows = await session.execute(
            sa.select(RobotMessage).where(RobotMessage.job_id == job_id).order_by(RobotMessage.at)
        )
        return list(rows.scalars())


@pytest.fixture
async def nats_inbox(ctx: ServiceContext) -> AsyncIterator[Callable[[str], Awaitable[list[bytes]]]]:
    """Collect what is published on a subject during a test (subscribed when asked)."""
    subs: list[Any] = []

    async def listen(subject: str) -> list[bytes]:
        box: list[bytes] = []

        async def cb(msg: Any) -> None:
            box.append(msg.data)

        subs.append(await ctx.nc.subscribe(subject, cb=cb))
        await ctx.nc.flush()
        return box

    yield listen
    for sub in subs:
        await sub.unsubscribe()
