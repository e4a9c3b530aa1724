"""The coordinator: OpenSession starts a robot process (key in its environment only), the session's
states reach the database through the scheduler, the session limit holds, shutdown closes sessions.

``rpa_robot`` (the reference robot) is not in the tree yet, so these tests start a tiny real Python
script through the process driver's ``command`` override; it records what it was given.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from rpa_common.models import Job, Robot, TerminalSession
from rpa_common.models.base import utcnow
from rpa_common.models.enums import JobState, RobotRole, RobotStatus, SessionState
from rpa_common.nats import subjects
from rpa_common.nats.messages import (
    CloseSession,
    JobStateChanged,
    OpenSession,
    RobotStatusChanged,
    decode_coordinator_command,
)
from rpa_common.security import key_matches, make_key
from rpa_common.service import ServiceContext
from rpa_coordinator.coordinator import Coordinator, IdentityError, resolve_identity
from rpa_coordinator.drivers import ProcessDriver
from rpa_scheduler.dispatch import dispatch_pass
from rpa_scheduler.service import Scheduler
from tests.scheduler.factory import World, listen, new_world

# Records its argv, environment and user in its working directory (the session directory), then
# waits for SIGTERM, or exits at once with EXIT_CODE when that is set.
STAND_IN = r"""
import json, os, signal, sys, time
exit_code = int(os.environ.get("EXIT_CODE_FOR_TEST", "-1"))
with open("seen.json", "w") as f:
    json.dump({"argv": sys.argv, "key": os.environ.get("RPA_ROBOT_KEY"), "uid": os.getuid(),
               "pid": os.getpid(), "home": os.environ.get("HOME")}, f)
if exit_code >= 0:
    sys.exit(exit_code)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True:
    time.sleep(0.1)
"""


@pytest.fixture
def work_dir() -> Any:
    # World-readable, so a child running as another OS user can read the script.
    with tempfile.TemporaryDirectory(prefix="rpa-coord-test-") as d:
        os.chmod(d, 0o755)  # noqa: S103 - another OS user must read the script
        script = Path(d) / "stand_in.py"
        script.write_text(STAND_IN)
        script.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        yield Path(d)


def driver_for(work_dir: Path, python: str = sys.executable) -> ProcessDriver:
    script = str(work_dir / "stand_in.py")
    return ProcessDriver(
        str(work_dir),
        command=lambda gateway, state_dir, cache_dir: [python, script, "--gateway", gateway],
        stop_timeout_s=5,
    )


class Setup:
    def __init__(self, world: World, coordinator_id: uuid.UUID, server_id: uuid.UUID) -> None:
        self.world = world
        self.coordinator_id = coordinator_id
        self.server_id = server_id

    async def unattended_job(self, login: str) -> tuple[uuid.UUID, uuid.UUID]:
        bot = await self.world.robot(role=RobotRole.UNATTENDED, status=RobotStatus.DISCONNECTED)
        await self.world.unattended_account(self.server_id, bot, login, "Pa55word!")
        return bot, await self.world.job(robot_id=bot)

    async def session_of(self, job_id: uuid.UUID) -> TerminalSession | None:
        async with self.world.ctx.sessions() as session:
            return await session.scalar(sa.select(TerminalSession).where(TerminalSession.job_id == job_id))

    async def wait_state(
        self, job_id: uuid.UUID, state: SessionState, timeout: float = 10
    ) -> TerminalSession:
        # The fixture's scheduler may be the one dispatching (its pass holds the job while ours
        # skips it): wait for the session row too.
        async with asyncio.timeout(timeout):
            while True:
                ts = await self.session_of(job_id)
                if ts is not None and ts.state == state:
                    return ts
                await asyncio.sleep(0.05)


@pytest.fixture
async def setup(ctx: ServiceContext) -> AsyncIterator[Setup]:
    world = await new_world(ctx)
    coordinator_id = await world.robot(role=RobotRole.COORDINATOR, status=RobotStatus.DISCONNECTED)
    server_id = await world.terminal_server(coordinator_id, max_sessions=10)
    # The scheduler side stores the coordinator's reports (own queue group: NATS is shared).
    scheduler = Scheduler(ctx, triggers=False, sweeps=False, queue=f"test-{uuid.uuid4().hex[:8]}")
    await scheduler.start()
    try:
        yield Setup(world, coordinator_id, server_id)
    finally:
        await scheduler.stop()


def seen(work_dir: Path, session_id: uuid.UUID) -> dict[str, Any]:
    path = work_dir / "sessions" / str(session_id) / "seen.json"
    return json.loads(path.read_text()) if path.exists() else {}


async def wait_seen(work_dir: Path, session_id: uuid.UUID) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while not (data := seen(work_dir, session_id)):
            await asyncio.sleep(0.05)
    return data


async def test_open_session_starts_the_robot_with_its_key_in_the_environment_only(
    ctx: ServiceContext, setup: Setup, work_dir: Path
) -> None:
    coordinator = Coordinator(
        ctx, setup.coordinator_id, driver_for(work_dir), gateway_url="ws://gw.test:8001/robot/v1"
    )
    await coordinator.start()
    try:
        async with listen(ctx, subjects.SESSION_STATE) as reports:
            bot, job_id = await setup.unattended_job("no_such_os_user_here")
            await dispatch_pass(ctx)
            ts = await setup.wait_state(job_id, SessionState.LOGGED_ON)
            for state in ("connecting", "logged_on"):
                await reports.wait_for(lambda m, s=state: m["session_id"] == str(ts.id) and m["state"] == s)
            data = await wait_seen(work_dir, ts.id)
            robot = await setup.world.get(Robot, bot)
            assert data["key"] and key_matches(data["key"], robot.key_hash), "the fresh key reached the child"
            assert data["argv"][1:] == ["--gateway", "ws://gw.test:8001/robot/v1"]
            cmdline = Path(f"/proc/{data['pid']}/cmdline").read_bytes()
            assert data["key"].encode() not in cmdline and b"Pa55word!" not in cmdline
            assert ts.opened_at is not None

            # The robot connects (the gateway says so): robot_connected, reported and stored.
            await ctx.publish(
                subjects.ROBOT_STATUS,
                RobotStatusChanged(
                    account_id=setup.world.account_id, robot_id=bot, status=RobotStatus.READY, at=utcnow()
                ).encode(),
            )
            await setup.wait_state(job_id, SessionState.ROBOT_CONNECTED)

            # The scheduler closes it: the process ends, the session is closed.
            await ctx.publish(
                subjects.coordinator_inbox(setup.coordinator_id),
                CloseSession(session_id=ts.id, reason="job over").encode(),
            )
            closed = await setup.wait_state(job_id, SessionState.ENDED)
            assert closed.closed_at is not None
            assert (
                not Path(f"/proc/{data['pid']}").exists()
                or b"zombie" in Path(f"/proc/{data['pid']}/status").read_bytes().lower()
            )
        assert coordinator.sessions == {}
    finally:
        await coordinator.stop()


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"), reason="needs root")
async def test_as_root_the_robot_runs_as_the_accounts_os_user(
    ctx: ServiceContext, setup: Setup, work_dir: Path
) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    coordinator = Coordinator(ctx, setup.coordinator_id, driver_for(work_dir, python="/usr/bin/python3"))
    await coordinator.start()
    try:
        _, job_id = await setup.unattended_job("nobody")
        await dispatch_pass(ctx)
        ts = await setup.wait_state(job_id, SessionState.LOGGED_ON)
        data = await wait_seen(work_dir, ts.id)
        assert data["uid"] == nobody.pw_uid and data["home"] == nobody.pw_dir
    finally:
        await coordinator.stop()
    # Shutdown closed the session.
    await setup.wait_state(job_id, SessionState.ENDED)


async def test_robot_exiting_before_it_connects_fails_the_session_and_the_job(
    ctx: ServiceContext, setup: Setup, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXIT_CODE_FOR_TEST", "3")
    coordinator = Coordinator(ctx, setup.coordinator_id, driver_for(work_dir))
    await coordinator.start()
    try:
        _, job_id = await setup.unattended_job("svc_crash")
        await dispatch_pass(ctx)
        ts = await setup.wait_state(job_id, SessionState.FAILED)
        assert ts.reason == "robot exited with code 3 before connecting"
        async with asyncio.timeout(5):
            while (job := await setup.world.get(Job, job_id)).state != JobState.FAILED:
                await asyncio.sleep(0.05)
        assert job.error == "session failed: robot exited with code 3 before connecting"
    finally:
        await coordinator.stop()


async def test_spawn_error_is_reported_as_failed(ctx: ServiceContext, setup: Setup, work_dir: Path) -> None:
    driver = ProcessDriver(str(work_dir), command=lambda *a: ["/nonexistent/robot-binary"])
    coordinator = Coordinator(ctx, setup.coordinator_id, driver)
    await coordinator.start()
    try:
        _, job_id = await setup.unattended_job("svc_nobin")
        await dispatch_pass(ctx)
        ts = await setup.wait_state(job_id, SessionState.FAILED)
        assert ts.reason is not None and ts.reason.startswith("robot process did not start")
    finally:
        await coordinator.stop()


async def test_sessions_over_the_limit_fail(ctx: ServiceContext, setup: Setup, work_dir: Path) -> None:
    coordinator = Coordinator(ctx, setup.coordinator_id, driver_for(work_dir), max_sessions=1)
    await coordinator.start()
    try:
        _, first = await setup.unattended_job("svc_one")
        _, second = await setup.unattended_job("svc_two")
        await dispatch_pass(ctx)  # the server allows 10: both sessions are asked for
        await setup.wait_state(first, SessionState.LOGGED_ON)
        ts = await setup.wait_state(second, SessionState.FAILED)
        assert ts.reason == "session limit reached"
        assert len(coordinator.sessions) == 1
    finally:
        await coordinator.stop()
    await setup.wait_state(first, SessionState.ENDED)


async def test_identity_comes_from_the_coordinator_key(ctx: ServiceContext, setup: Setup) -> None:
    world = setup.world
    key = make_key("rbk")
    await world.set(Robot, setup.coordinator_id, key_prefix=key.prefix, key_hash=key.hash)
    assert await resolve_identity(ctx, key.full) == (setup.coordinator_id, world.account_id)
    with pytest.raises(IdentityError):
        await resolve_identity(ctx, key.full[:-2] + "xx")  # right prefix, wrong secret
    with pytest.raises(IdentityError):
        await resolve_identity(ctx, "not-a-key")
    other = make_key("rbk")
    bot = await world.robot(role=RobotRole.UNATTENDED)
    await world.set(Robot, bot, key_prefix=other.prefix, key_hash=other.hash)
    with pytest.raises(IdentityError):
        await resolve_identity(ctx, other.full)  # an unattended robot's key is no coordinator's


async def test_an_open_session_sent_again_is_answered_not_opened_twice(
    ctx: ServiceContext, setup: Setup, work_dir: Path
) -> None:
    coordinator = Coordinator(ctx, setup.coordinator_id, driver_for(work_dir))
    await coordinator.start()
    try:
        async with listen(ctx, subjects.coordinator_inbox(setup.coordinator_id)) as inbox:
            _, job_id = await setup.unattended_job("svc_twice")
            await dispatch_pass(ctx)
            command = await inbox.wait_for(lambda m: m["job_id"] == str(job_id))
        ts = await setup.wait_state(job_id, SessionState.LOGGED_ON)
        first = await wait_seen(work_dir, ts.id)
        payload = json.dumps(command).encode()
        async with listen(ctx, subjects.SESSION_STATE) as reports:
            # The scheduler's sweep sends it again when the coordinator's answer was lost.
            await ctx.publish(subjects.coordinator_inbox(setup.coordinator_id), payload)
            await reports.wait_for(lambda m: m["session_id"] == str(ts.id) and m["state"] == "logged_on")
        assert list(coordinator.sessions) == [ts.id]
        assert (await wait_seen(work_dir, ts.id))["pid"] == first["pid"], "one robot process"

        await ctx.publish(
            subjects.coordinator_inbox(setup.coordinator_id),
            CloseSession(session_id=ts.id, reason="job over").encode(),
        )
        await setup.wait_state(job_id, SessionState.ENDED)
        async with listen(ctx, subjects.SESSION_STATE) as reports:
            # A late copy after the session ended opens nothing: it is answered with the end.
            await ctx.publish(subjects.coordinator_inbox(setup.coordinator_id), payload)
            await reports.wait_for(lambda m: m["session_id"] == str(ts.id) and m["state"] == "ended")
        assert coordinator.sessions == {}
    finally:
        await coordinator.stop()


def test_coordinator_commands_are_told_apart_by_their_kind() -> None:
    sid, rid = uuid.uuid4(), uuid.uuid4()
    close = CloseSession(session_id=sid, reason="done")
    assert json.loads(close.encode())["kind"] == "close_session"
    assert decode_coordinator_command(close.encode()) == close
    opened = OpenSession(
        session_id=sid,
        account_id=rid,
        unattended_account_id=rid,
        robot_id=rid,
        job_id=None,
        login="svc",
        sealed="box",
    )
    assert isinstance(decode_coordinator_command(opened.encode()), OpenSession)
    # No kind, or one nobody knows: refused, never guessed from the fields.
    for body in ({"session_id": str(sid)}, {"kind": "reboot", "session_id": str(sid)}):
        with pytest.raises(ValueError):
            decode_coordinator_command(json.dumps(body).encode())
    with pytest.raises(ValueError):  # an OpenSession without its sealed box is not a CloseSession
        decode_coordinator_command(json.dumps({**json.loads(opened.encode()), "sealed": None}).encode())


async def _connected(ctx: ServiceContext, setup: Setup, bot: uuid.UUID) -> None:
    await ctx.publish(
        subjects.ROBOT_STATUS,
        RobotStatusChanged(
            account_id=setup.world.account_id, robot_id=bot, status=RobotStatus.READY, at=utcnow()
        ).encode(),
    )


async def _stopped_with_a_running_session(
    ctx: ServiceContext, setup: Setup, work_dir: Path, state_file: Path, login: str
) -> tuple[uuid.UUID, TerminalSession, int]:
    """A coordinator logs a session on for an unattended job of ``login``, sees its robot connect and
    stops keeping the session running (an upgrade, or a crash); ``(job id, session, robot pid)``."""
    first = Coordinator(
        ctx, setup.coordinator_id, driver_for(work_dir), state_file=state_file, keep_sessions_on_stop=True
    )
    await first.start()
    try:
        bot, job_id = await setup.unattended_job(login)
        await dispatch_pass(ctx)
        ts = await setup.wait_state(job_id, SessionState.LOGGED_ON)
        await _connected(ctx, setup, bot)
        await setup.wait_state(job_id, SessionState.ROBOT_CONNECTED)
        pid = (await wait_seen(work_dir, ts.id))["pid"]
    finally:
        await first.stop()  # keeps the session running
    return job_id, ts, pid


async def test_a_restarted_coordinator_adopts_its_running_session_and_logs_it_off_later(
    ctx: ServiceContext, setup: Setup, work_dir: Path
) -> None:
    state_file = work_dir / "sessions.json"
    job_id, ts, pid = await _stopped_with_a_running_session(ctx, setup, work_dir, state_file, "svc_adopt")
    saved = json.loads(state_file.read_text())
    assert [s["session_id"] for s in saved["sessions"]] == [str(ts.id)]
    assert "Pa55word!" not in state_file.read_text() and "rbk_" not in state_file.read_text()
    assert Path(f"/proc/{pid}").exists()

    second = Coordinator(ctx, setup.coordinator_id, driver_for(work_dir), state_file=state_file)
    await second.start()
    try:
        assert list(second.sessions) == [ts.id] and second.sessions[ts.id].handle.adopted  # type: ignore[union-attr]
        await ctx.publish(
            subjects.coordinator_inbox(setup.coordinator_id),
            CloseSession(session_id=ts.id, reason="job over").encode(),
        )
        ended = await setup.wait_state(job_id, SessionState.ENDED)
        assert ended.reason == "job over"
        assert (
            not Path(f"/proc/{pid}").exists() or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
        )
        assert json.loads(state_file.read_text())["sessions"] == []
    finally:
        await second.stop()


async def test_a_session_that_ended_while_the_coordinator_was_down_is_reported(
    ctx: ServiceContext, setup: Setup, work_dir: Path
) -> None:
    state_file = work_dir / "sessions.json"
    job_id, _, pid = await _stopped_with_a_running_session(ctx, setup, work_dir, state_file, "svc_gone")
    os.kill(pid, 15)  # the robot leaves while no coordinator watches
    async with asyncio.timeout(5):
        while (
            Path(f"/proc/{pid}").exists()
            and b"zombie" not in Path(f"/proc/{pid}/status").read_bytes().lower()
        ):
            await asyncio.sleep(0.05)
    second = Coordinator(ctx, setup.coordinator_id, driver_for(work_dir), state_file=state_file)
    await second.start()
    try:
        ended = await setup.wait_state(job_id, SessionState.ENDED)
        assert ended.reason == "ended while the coordinator was down"
        assert second.sessions == {}
    finally:
        await second.stop()


async def test_a_session_whose_job_ended_without_its_robot_leaving_is_logged_off(
    ctx: ServiceContext, setup: Setup, work_dir: Path
) -> None:
    coordinator = Coordinator(ctx, setup.coordinator_id, driver_for(work_dir), logoff_grace_s=0.3)
    await coordinator.start()
    try:
        bot, job_id = await setup.unattended_job("svc_hard")
        await dispatch_pass(ctx)
        ts = await setup.wait_state(job_id, SessionState.LOGGED_ON)
        await _connected(ctx, setup, bot)
        await setup.wait_state(job_id, SessionState.ROBOT_CONNECTED)
        job = await setup.world.get(Job, job_id)
        async with listen(ctx, subjects.SESSION_STATE) as reports:
            # A hard interrupt ended the job; the stand-in robot does not leave by itself.
            await ctx.publish(
                subjects.JOB_STATE,
                JobStateChanged(
                    account_id=setup.world.account_id,
                    job_id=job_id,
                    process_id=job.process_id,
                    robot_id=bot,
                    from_state=JobState.INTERRUPTING,
                    to_state=JobState.INTERRUPTED,
                    attempt=job.attempt,
                    at=utcnow(),
                ).encode(),
            )
            await reports.wait_for(lambda m: m["session_id"] == str(ts.id) and m["state"] == "logging_off")
        ended = await setup.wait_state(job_id, SessionState.ENDED)
        assert ended.reason == "job interrupted"
    finally:
        await coordinator.stop()


async def test_credentials_sealed_for_another_key_fail_the_session(
    ctx: ServiceContext, setup: Setup, work_dir: Path
) -> None:
    coordinator = Coordinator(ctx, setup.coordinator_id, driver_for(work_dir), register_key=False)
    await coordinator.start()
    try:
        # The server's registered key is the world's, not this coordinator's.
        _, job_id = await setup.unattended_job("svc_otherkey")
        await dispatch_pass(ctx)
        ts = await setup.wait_state(job_id, SessionState.FAILED)
        assert ts.reason is not None and "do not open with this coordinator's key" in ts.reason
        assert not (work_dir / "sessions" / str(ts.id)).exists()  # nothing was started
    finally:
        await coordinator.stop()


async def test_no_message_on_nats_carries_the_password_or_the_robot_key(
    ctx: ServiceContext, setup: Setup, work_dir: Path
) -> None:
    seen_messages: list[bytes] = []

    async def spy(msg: Any) -> None:
        seen_messages.append(msg.data)

    sub = await ctx.nc.subscribe(f"{subjects.PREFIX}.>", cb=spy)
    coordinator = Coordinator(ctx, setup.coordinator_id, driver_for(work_dir))
    await coordinator.start()
    try:
        bot, job_id = await setup.unattended_job("svc_spied")
        await dispatch_pass(ctx)
        ts = await setup.wait_state(job_id, SessionState.LOGGED_ON)
        key = (await wait_seen(work_dir, ts.id))["key"]
        await _connected(ctx, setup, bot)
        await setup.wait_state(job_id, SessionState.ROBOT_CONNECTED)
        await ctx.publish(
            subjects.coordinator_inbox(setup.coordinator_id),
            CloseSession(session_id=ts.id, reason="job over").encode(),
        )
        await setup.wait_state(job_id, SessionState.ENDED)
        await ctx.nc.flush()
    finally:
        await coordinator.stop()
        await sub.unsubscribe()
    kinds = {json.loads(m).get("kind") for m in seen_messages}
    assert "open_session" in kinds and len(seen_messages) >= 5  # the command and the reports were seen
    assert key and not any(key.encode() in m or b"Pa55word!" in m for m in seen_messages)
