"""End to end over real RDP: the coordinator's ``rdp`` driver logs OS accounts on to a real xrdp server
on loopback; in each session the reference robot starts as the account's OS user, takes its key at
the coordinator's door, connects to a real gateway process, runs its job and logs off.

- two accounts at once, both jobs Successful, both sessions ended;
- a wrong password: a failed session and a failed job with a clear reason within the log-on deadline;
- a coordinator restart in the middle of a job: the new coordinator adopts the session;
- a hard interrupt of a job ends its session.

Throughout, the accounts' passwords and the sessions' robot keys are looked for (and must be
absent) in every NATS message of the product (``rpa.>``), in ``ps`` output sampled all along, and
in the logs (the test's captured output, the gateway's, xrdp's and sesman's).

Needs root and Debian's ``xrdp xorgxrdp freerdp2-x11 xvfb`` (installed with apt-get when missing);
without them the tests are skipped loudly (and fail under CI). They are marked ``rdp`` and left out
of ``make test`` (about 75 s per database on 2 cores); ``make rdp-test`` runs them on both
databases, and ``.ci/run`` runs ``make rdp-test``.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from nats.aio.msg import Msg

from rpa_common.db.uow import run_in_transaction
from rpa_common.jobflow import Actor, transition
from rpa_common.models import Job, Robot, TerminalSession
from rpa_common.models.enums import JobState, RobotRole, RobotStatus, SessionState
from rpa_common.nats import subjects
from rpa_common.nats.messages import JobControl
from rpa_common.service import ServiceContext
from rpa_coordinator.coordinator import Coordinator
from rpa_coordinator.door import RobotDoor
from rpa_coordinator.drivers import RdpDriver
from rpa_scheduler.service import Scheduler
from tests.conftest import IN_CI
from tests.coordinator.test_e2e import gateway_url, publish_hello  # noqa: F401 - the gateway fixture
from tests.rdp.xrdp_server import Unavailable, XrdpServer, xrdp_server
from tests.scheduler.factory import World, new_world

pytestmark = [pytest.mark.slow, pytest.mark.rdp]

LOGON_TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def xrdp() -> Iterator[XrdpServer]:
    try:
        with xrdp_server() as server:
            yield server
    except Unavailable as exc:
        message = f"!!! no RDP server on this machine: {exc} — RDP end-to-end tests SKIPPED !!!"
        if IN_CI:
            pytest.fail(f"{message} (CI must not skip them)")
        pytest.skip(message)


class PsSampler:
    """``ps`` output of the whole machine, sampled every ``period`` seconds in a thread."""

    def __init__(self, period: float = 0.25) -> None:
        self.period = period
        self.samples: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            done = subprocess.run(["ps", "-eo", "pid,user,args", "ww"], capture_output=True, text=True)
            self.samples.append(done.stdout)
            self._stop.wait(self.period)

    def __enter__(self) -> PsSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def seen(self, needle: str) -> bool:
        return any(needle in s for s in self.samples)


@dataclass
class Spy:
    """Every message on the product's subjects (``rpa.>``), raw."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)

    async def on_msg(self, msg: Msg) -> None:
        self.messages.append((msg.subject, msg.data))

    def seen(self, needle: str) -> bool:
        raw = needle.encode()
        return any(raw in data for _, data in self.messages)

    def session_states(self, session_id: uuid.UUID) -> list[str]:
        import json

        out = []
        for subject, data in self.messages:
            if subject == subjects.SESSION_STATE:
                body = json.loads(data)
                if body["session_id"] == str(session_id):
                    out.append(body["state"])
        return out


@dataclass
class Stack:
    world: World
    coordinator: Coordinator
    scheduler: Scheduler
    server_id: uuid.UUID
    spy: Spy
    work_dir: Path
    xrdp: XrdpServer
    gateway_url: str

    def new_coordinator(self) -> Coordinator:
        """A coordinator of the same robot, with the same state file (a restart)."""
        driver = RdpDriver(
            str(self.work_dir),
            RobotDoor(self.xrdp.door_dir / f"robot-{uuid.uuid4().hex[:6]}.sock"),
            display=self.xrdp.display,
            logon_timeout_s=LOGON_TIMEOUT_S,
        )
        return Coordinator(
            self.world.ctx,
            self.coordinator.robot_id,
            driver,
            gateway_url=self.gateway_url,
            state_file=self.work_dir / "sessions.json",
            logon_timeout_s=LOGON_TIMEOUT_S,
            seal_key=self.coordinator.seal_key,
        )


@pytest.fixture
async def stack(
    ctx: ServiceContext,
    xrdp: XrdpServer,
    gateway_url: str,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> AsyncIterator[Stack]:
    world = await new_world(ctx)
    await publish_hello(world)
    coordinator_id = await world.robot(role=RobotRole.COORDINATOR, status=RobotStatus.DISCONNECTED)
    server_id = await world.terminal_server(
        coordinator_id,
        max_sessions=2,
        sealed=False,  # the coordinator registers its own public key at start
        hostname="127.0.0.1",
        rdp_port=xrdp.port,
        cert_fingerprint=xrdp.fingerprint,
        shell_command=xrdp.robot_shell(),
    )
    work_dir = tmp_path / "coordinator"
    driver = RdpDriver(
        str(work_dir),
        RobotDoor(xrdp.door_dir / f"robot-{uuid.uuid4().hex[:6]}.sock"),
        display=xrdp.display,
        logon_timeout_s=LOGON_TIMEOUT_S,
    )
    coordinator = Coordinator(
        ctx,
        coordinator_id,
        driver,
        gateway_url=gateway_url,
        state_file=work_dir / "sessions.json",
        logon_timeout_s=LOGON_TIMEOUT_S,
    )
    scheduler = Scheduler(ctx, triggers=False, sweeps=False, queue=f"test-{uuid.uuid4().hex[:8]}")
    spy = Spy()
    sub = await ctx.nc.subscribe(f"{subjects.PREFIX}.>", cb=spy.on_msg)
    await scheduler.start()
    await coordinator.start()
    stack = Stack(world, coordinator, scheduler, server_id, spy, work_dir, xrdp, gateway_url)
    try:
        yield stack
    finally:
        await stack.coordinator.stop()
        await scheduler.stop()
        await sub.unsubscribe()


async def wait_final(world: World, job_id: uuid.UUID, timeout: float) -> Job:
    async with asyncio.timeout(timeout):
        while (job := await world.get(Job, job_id)).state not in (JobState.SUCCESSFUL, JobState.FAILED):
            await asyncio.sleep(0.2)
    return job


async def session_of(ctx: ServiceContext, job_id: uuid.UUID) -> TerminalSession | None:
    async with ctx.sessions() as session:
        row: TerminalSession | None = await session.scalar(
            sa.select(TerminalSession).where(TerminalSession.job_id == job_id)
        )
        return row


async def wait_session_final(ctx: ServiceContext, job_id: uuid.UUID, timeout: float = 60) -> TerminalSession:
    async with asyncio.timeout(timeout):
        while True:
            ts = await session_of(ctx, job_id)
            if ts is not None and ts.state in (SessionState.ENDED, SessionState.FAILED):
                return ts
            await asyncio.sleep(0.2)


def _login(tag: str) -> str:
    return f"rpa{os.getpid() % 100000}{tag}"


def assert_secret_absent(secret: str, stack: Stack, ps: PsSampler, logs: str) -> None:
    assert not stack.spy.seen(secret), "a secret travelled on NATS"
    assert not ps.seen(secret), "a secret was on a command line"
    assert secret not in logs, "a secret was in a log"


async def test_two_accounts_log_on_at_once_run_their_jobs_and_log_off(
    ctx: ServiceContext, stack: Stack, xrdp: XrdpServer, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    world = stack.world
    accounts = []
    for tag in ("a", "b"):
        login = _login(tag)
        password = xrdp.account(login)
        bot = await world.robot(role=RobotRole.UNATTENDED, status=RobotStatus.DISCONNECTED)
        await world.unattended_account(stack.server_id, bot, login, password)
        accounts.append((login, password, bot))
    with PsSampler() as ps:
        jobs = [
            await world.job(robot_id=bot, input_args={"name": login, "count": 2, "delay_s": 1.5})
            for login, _, bot in accounts
        ]
        started = time.monotonic()
        stack.scheduler.wake.set()
        done = [await wait_final(world, job_id, 120) for job_id in jobs]
        sessions = [await wait_session_final(ctx, job_id) for job_id in jobs]
    for (login, _, _), job in zip(accounts, done, strict=True):
        assert job.state == JobState.SUCCESSFUL, f"{job.error}\n{xrdp.logs()}"
        assert job.output_args == {"greeting": f"Hello, {login}!", "lines": 2}
    for ts in sessions:
        assert (ts.state, ts.reason) == (SessionState.ENDED, None), xrdp.logs()
    # Each session went the whole way, reported by the coordinator.
    for ts in sessions:
        states = stack.spy.session_states(ts.id)
        assert states == ["connecting", "logged_on", "robot_connected", "ended"], states
    # Both sessions were open at the same time (two seats of one server).
    opened = [ts.opened_at for ts in sessions]
    closed = [ts.closed_at for ts in sessions]
    assert all(opened) and all(closed)
    assert max(opened) < min(closed), "the two sessions did not overlap"  # type: ignore[type-var]
    # Each robot ran inside its session as the account's OS user.
    for login, _, _ in accounts:
        user = pwd.getpwnam(login)
        assert (Path(user.pw_dir) / ".rpa-robot").stat().st_uid == user.pw_uid
    assert stack.coordinator.sessions == {}
    print(f"two RDP sessions: both jobs done in {time.monotonic() - started:.1f} s")

    # No secret anywhere: passwords, and the robots' keys (by their public prefix: a full key
    # would contain it).
    async with ctx.sessions() as session:
        prefixes = (
            await session.scalars(
                sa.select(Robot.key_prefix).where(Robot.id.in_([b for _, _, b in accounts]))
            )
        ).all()
    gateway_log = "".join(p.read_text(errors="replace") for p in tmp_path.glob("gateway.log"))
    logs = capfd.readouterr()
    everything = logs.out + logs.err + gateway_log + xrdp.logs()
    for _, password, _ in accounts:
        assert_secret_absent(password, stack, ps, everything)
    for prefix in prefixes:
        assert not stack.spy.seen(prefix) and not ps.seen(f"rbk_{prefix}")
    # The samples covered the sessions: some show the RDP clients (the check above is not vacuous).
    assert ps.seen("xfreerdp"), f"{len(ps.samples)} ps samples, none while a client ran"


async def test_a_wrong_password_fails_the_session_and_the_job_within_the_deadline(
    ctx: ServiceContext, stack: Stack, xrdp: XrdpServer, capfd: pytest.CaptureFixture[str]
) -> None:
    world = stack.world
    login = _login("w")
    real_password = xrdp.account(login)
    wrong = real_password + "-wrong"
    bot = await world.robot(role=RobotRole.UNATTENDED, status=RobotStatus.DISCONNECTED)
    await world.unattended_account(stack.server_id, bot, login, wrong)
    with PsSampler() as ps:
        job_id = await world.job(robot_id=bot)
        started = time.monotonic()
        stack.scheduler.wake.set()
        job = await wait_final(world, job_id, LOGON_TIMEOUT_S + 30)
        elapsed = time.monotonic() - started
        ts = await wait_session_final(ctx, job_id)
    reason = (
        f"not logged on within {LOGON_TIMEOUT_S:g} s: wrong password, or the server did not start the robot"
    )
    assert (ts.state, ts.reason) == (SessionState.FAILED, reason)
    assert job.state == JobState.FAILED and job.error == f"session failed: {reason}"
    assert LOGON_TIMEOUT_S <= elapsed < LOGON_TIMEOUT_S + 20, elapsed
    assert stack.spy.session_states(ts.id) == ["connecting", "failed"]
    assert stack.coordinator.sessions == {}
    logs = capfd.readouterr()
    # The failed session's client log is kept for diagnosis: it must not hold the password either.
    client_logs = [p.read_text(errors="replace") for p in (stack.work_dir / "rdp").glob("*/client.log")]
    assert client_logs, "the failed session's client log was kept"
    everything = logs.out + logs.err + xrdp.logs() + "".join(client_logs)
    for secret in (wrong, real_password):
        assert_secret_absent(secret, stack, ps, everything)
    # The client was ended: no RDP client of this session is left.
    now = subprocess.run(["ps", "-eo", "args", "ww"], capture_output=True, text=True, check=True).stdout
    assert not any("xfreerdp" in line and f"/u:{login}" in line for line in now.splitlines())


async def _running_long_job(
    stack: Stack, xrdp: XrdpServer, letter: str, *, seconds: int
) -> tuple[Job, uuid.UUID, str]:
    """A job of the ``long`` example (``seconds``) for a new unattended robot with its own OS
    account on the xrdp server, once it is Running: ``(job, robot id, login)``."""
    world = stack.world
    await publish_hello(world, "long")
    login = _login(letter)
    password = xrdp.account(login)
    bot = await world.robot(role=RobotRole.UNATTENDED, status=RobotStatus.DISCONNECTED)
    await world.unattended_account(stack.server_id, bot, login, password)
    job_id = await world.job(robot_id=bot, input_args={"seconds": seconds})
    stack.scheduler.wake.set()
    async with asyncio.timeout(60):
        while (job := await world.get(Job, job_id)).state != JobState.RUNNING:
            assert not job.state.is_final, job.error
            await asyncio.sleep(0.2)
    return job, bot, login


async def test_a_restarted_coordinator_adopts_a_running_rdp_session(
    ctx: ServiceContext, stack: Stack, xrdp: XrdpServer
) -> None:
    world = stack.world
    job_id = (await _running_long_job(stack, xrdp, "r", seconds=8))[0].id
    ts = await session_of(ctx, job_id)
    assert ts is not None and ts.state == SessionState.ROBOT_CONNECTED
    client_pid = stack.coordinator.sessions[ts.id].handle.pid  # type: ignore[union-attr]

    # The coordinator goes away (an upgrade) and comes back: the session and its job go on.
    stack.coordinator.keep_sessions_on_stop = True
    await stack.coordinator.stop()
    assert client_pid is not None and Path(f"/proc/{client_pid}").exists()
    stack.coordinator = stack.new_coordinator()
    await stack.coordinator.start()
    assert list(stack.coordinator.sessions) == [ts.id]
    assert stack.coordinator.sessions[ts.id].handle.adopted  # type: ignore[union-attr]

    job = await wait_final(world, job_id, 60)
    assert job.state == JobState.SUCCESSFUL, f"{job.error}\n{xrdp.logs()}"
    ended = await wait_session_final(ctx, job_id, 30)
    assert (ended.state, ended.reason) == (SessionState.ENDED, None)
    async with asyncio.timeout(10):
        while stack.coordinator.sessions:
            await asyncio.sleep(0.1)


async def test_a_hard_interrupt_ends_the_jobs_rdp_session(
    ctx: ServiceContext, stack: Stack, xrdp: XrdpServer
) -> None:
    world = stack.world
    job, bot, login = await _running_long_job(stack, xrdp, "i", seconds=120)
    job_id = job.id

    # What POST /jobs/{id}/interrupt does: Running -> Interrupting, then JOB_CONTROL for the gateway.
    async def interrupt(session: Any) -> None:
        done = await transition(
            session,
            job_id,
            JobState.INTERRUPTING,
            expected=[JobState.RUNNING],
            actor=Actor.system(),
            reason="test",
        )
        assert done is not None

    await run_in_transaction(ctx.sessions, interrupt)
    await ctx.publish(
        subjects.JOB_CONTROL,
        JobControl(
            account_id=world.account_id, job_id=job_id, robot_id=bot, attempt=job.attempt, command="interrupt"
        ).encode(),
    )
    job = await wait_final_any(world, job_id, 60)
    assert job.state == JobState.INTERRUPTED, f"{job.error}\n{xrdp.logs()}"
    ended = await wait_session_final(ctx, job_id, 40)
    assert ended.state == SessionState.ENDED, ended.reason
    states = stack.spy.session_states(ended.id)
    assert states[:3] == ["connecting", "logged_on", "robot_connected"] and states[-1] == "ended", states
    now = subprocess.run(["ps", "-eo", "args", "ww"], capture_output=True, text=True, check=True).stdout
    assert not any("xfreerdp" in line and f"/u:{login}" in line for line in now.splitlines())


async def wait_final_any(world: World, job_id: uuid.UUID, timeout: float) -> Job:
    async with asyncio.timeout(timeout):
        while not (job := await world.get(Job, job_id)).state.is_final:
            await asyncio.sleep(0.2)
    return job
