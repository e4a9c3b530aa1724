"""Unattended robots started on demand: scheduler -> coordinator -> reference robot, all real processes.

A job for an unattended robot that is not connected makes the scheduler write a terminal session
and send ``OpenSession`` to the coordinator of the robot's terminal server; the coordinator process
starts ``python -m rpa_robot run --unattended --exit-after-job`` (the process driver), the robot
connects to the gateway, runs the job and leaves. The account's password travels only inside that
command: it must never show in a log file of any process, nor on a command line.
"""

from __future__ import annotations

import asyncio
import getpass
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import sqlalchemy as sa
from nats.aio.msg import Msg

from rpa_common.models import TerminalSession
from rpa_common.nats import subjects
from rpa_common.nats.messages import SessionStateReport
from tests.e2e.conftest import FINAL_STATES, Api, Service, Stack, eventually, free_port, gone, history

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def unattended_setup(api: Api, password: str) -> tuple[str, str, str]:
    """A coordinator robot, its terminal server, and an unattended robot bound to an account of the
    current OS user on that server: (coordinator key, unattended robot id, server id)."""
    coordinator_id, coordinator_key = await api.robot(role="coordinator")
    server = await api.call(
        "POST",
        "/terminal-servers",
        201,
        json={
            "name": f"ts-{uuid.uuid4().hex[:8]}",
            "hostname": "localhost",
            "coordinator_id": coordinator_id,
        },
    )
    robot_id, _ = await api.robot(role="unattended")
    account = await api.call(
        "POST",
        f"/terminal-servers/{server['id']}/accounts",
        201,
        json={"login": getpass.getuser(), "password": password, "robot_id": robot_id},
    )
    assert "password" not in account
    return coordinator_key, robot_id, server["id"]


async def coordinator_stack(
    stack: Stack, coordinator_key: str, gateway_url: str | None, **scheduler_env: str
) -> tuple[Service, Path]:
    """A gateway, a scheduler and a coordinator whose robots connect to ``gateway_url`` (default:
    that gateway); returns the gateway and the coordinator's work dir."""
    gateway = stack.service("gateway")
    work_dir = stack.dir / "coordinator-work"
    coordinator = stack.service(
        "coordinator",
        RPA_COORDINATOR_KEY=coordinator_key,
        RPA_GATEWAY_PUBLIC_URL=gateway_url or gateway.ws_url,
        RPA_COORDINATOR_WORK_DIR=str(work_dir),
    )
    await stack.start(stack.service("scheduler", settings=scheduler_env), gateway, coordinator)
    return gateway, work_dir


async def session_row(api: Api, job_id: str) -> TerminalSession | None:
    async with api.ctx.sessions() as session:
        row: TerminalSession | None = await session.scalar(
            sa.select(TerminalSession).where(TerminalSession.job_id == uuid.UUID(job_id))
        )
        return row


def robot_processes(work_dir: Path) -> list[psutil.Process]:
    """Robot processes started by the coordinator (their state dir is under its work dir)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = p.info["cmdline"] or []
        if "rpa_robot" in cmdline and any(str(work_dir) in a for a in cmdline):
            found.append(p)
    return found


def command_lines_with(secret: str) -> list[str]:
    hits = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if secret in line:
            hits.append(f"{p.info['pid']}: {line}")
    return hits


async def session_reports(api: Api) -> tuple[list[SessionStateReport], Any]:
    """What coordinators report on ``SESSION_STATE`` for this account, as it happens."""
    seen: list[SessionStateReport] = []

    async def cb(msg: Msg) -> None:
        report = SessionStateReport.decode(msg.data)
        if report.account_id == api.tenant.account_id:
            seen.append(report)

    sub = await api.ctx.nc.subscribe(subjects.SESSION_STATE, cb=cb)
    await api.ctx.nc.flush()
    return seen, sub


async def test_job_for_a_disconnected_unattended_robot_opens_a_session_and_runs_there(
    api: Api, stack: Stack
) -> None:
    password = f"Pw-{uuid.uuid4().hex}"
    coordinator_key, robot_id, _ = await unattended_setup(api, password)
    _, work_dir = await coordinator_stack(stack, coordinator_key, None, RPA_SESSION_CONNECT_TIMEOUT_S="30")
    reports, sub = await session_reports(api)
    try:
        assert (await api.get_robot(robot_id))["status"] == "Disconnected"
        job_id = await api.job(
            "hello", robot=robot_id, input_args={"name": "session", "count": 3, "delay_s": 0.3}
        )

        # While the job runs: the robot process exists, and no command line carries the password
        # (nor does the robot's environment: the process driver does not need it).
        robot_pids: set[int] = set()
        deadline = time.monotonic() + 60
        while (job := await api.get_job(job_id))["state"] not in FINAL_STATES:
            assert time.monotonic() < deadline, f"job still {job['state']}\n{stack.report()}"
            for p in robot_processes(work_dir):
                robot_pids.add(p.pid)
                try:
                    assert password not in "\n".join(f"{k}={v}" for k, v in p.environ().items())
                    assert "RPA_ROBOT_KEY" in p.environ()
                    assert not any(a.startswith("rbk_") for a in p.cmdline())
                except psutil.NoSuchProcess:
                    pass
            assert not command_lines_with(password)
            await asyncio.sleep(0.05)
        assert job["state"] == "Successful", f"{job['error']}\n{stack.report()}"
        assert robot_pids, "the robot process was never seen running"
        assert job["output_args"] == {"greeting": "Hello, session!", "lines": 3}
        assert history(job) == [
            (None, "Pending"),
            ("Pending", "Starting"),
            ("Starting", "Running"),
            ("Running", "Successful"),
        ]
        assert job["history"][1]["reason"] == "opening a session"

        # The robot logs off after its job: its process ends, the session is closed, it is Disconnected.
        await eventually(lambda: _all_gone(robot_pids), 20, "the robot process to exit")

        async def closed() -> TerminalSession | None:
            row = await session_row(api, job_id)
            return row if row is not None and row.state in ("ended", "failed") else None

        ts = await eventually(closed, 45, "the session to end")
        assert (str(ts.state), ts.reason) == ("ended", None), stack.report()
        assert ts.robot_id == uuid.UUID(robot_id)
        assert ts.opened_at is not None and ts.closed_at is not None and ts.opened_at <= ts.closed_at
        states = [str(r.state) for r in reports if r.session_id == ts.id]
        assert states == ["connecting", "logged_on", "robot_connected", "ended"], states
        robot = await api.wait_robot(robot_id, "Disconnected", stack=stack)
        assert robot["current_job_id"] is None
    finally:
        await sub.unsubscribe()

    # The password is in no process's output (services, the robot the coordinator started).
    logs = stack.log_files()
    assert {p.name for p in logs} >= {"scheduler-0.log", "gateway-0.log", "coordinator-0.log", "robot.log"}
    for path in logs:
        assert password not in path.read_text(errors="replace"), f"password in {path}"


async def _all_gone(pids: set[int]) -> bool:
    return all(gone(p) for p in pids)


async def test_session_whose_robot_cannot_connect_fails_the_job_with_the_session_reason(
    api: Api, stack: Stack
) -> None:
    password = f"Pw-{uuid.uuid4().hex}"
    coordinator_key, robot_id, _ = await unattended_setup(api, password)
    # The coordinator's robots are sent to a port where no gateway listens.
    nowhere = f"ws://127.0.0.1:{free_port()}/robot/v1"
    _, work_dir = await coordinator_stack(stack, coordinator_key, nowhere, RPA_SESSION_CONNECT_TIMEOUT_S="3")
    job_id = await api.job("hello", robot=robot_id)

    await api.wait_job(job_id, "Starting", stack=stack)
    robot_pids = {p.pid for p in await eventually(lambda: _robots(work_dir), 10, "the robot process")}
    job = await api.wait_job(job_id, timeout=20, stack=stack)
    assert job["state"] == "Failed"
    assert job["error"] == "robot did not connect within 3 s"
    assert history(job) == [(None, "Pending"), ("Pending", "Starting"), ("Starting", "Failed")]
    assert job["history"][-1]["reason"] == "robot did not connect within 3 s"
    ts = await session_row(api, job_id)
    assert ts is not None and (str(ts.state), ts.reason) == ("failed", "robot did not connect within 3 s")
    assert ts.closed_at is not None
    # The scheduler told the coordinator to close the session: its robot process is stopped.
    await eventually(lambda: _all_gone(robot_pids), 20, "the robot process to be stopped")
    robot = await api.get_robot(robot_id)
    assert (robot["status"], robot["current_job_id"]) == ("Disconnected", None)
    for path in stack.log_files():
        assert password not in path.read_text(errors="replace"), f"password in {path}"


async def _robots(work_dir: Path) -> list[psutil.Process]:
    return robot_processes(work_dir)
