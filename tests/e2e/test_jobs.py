"""The whole path of a job, with every part a real process: a job created through the API is
dispatched by the scheduler process, delivered by the gateway process, run by the reference robot
process, and ends as a user sees it in the API (state, output, error, history) and in the logs.

Also what only time or a crash decides: soft stop, hard stop of a script that ignores it (and its
process tree is gone), the ``stop_after_s`` / ``interrupt_after_s`` deadlines enforced by the
scheduler's sweep, and a robot killed mid-job ("robot lost" once its lease runs out).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import pytest

from rpa_common.models.enums import LogLevel
from tests.e2e.conftest import (
    Api,
    Child,
    Service,
    Stack,
    eventually,
    gone,
    history,
    job_messages,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
async def services(stack: Stack) -> Service:
    """A scheduler and a gateway (the gateway is returned: robots connect to it)."""
    scheduler, gateway = stack.service("scheduler"), stack.service("gateway")
    await stack.start(scheduler, gateway)
    return gateway


async def connected_robot(api: Api, stack: Stack, gateway: Service, *extra: str) -> tuple[str, Child]:
    robot_id, key = await api.robot()
    robot = stack.robot(gateway.ws_url, key, *extra)
    await api.wait_robot(robot_id, "Ready", stack=stack)
    return robot_id, robot


async def test_job_created_through_the_api_runs_on_a_real_robot_and_ends_successful(
    api: Api, stack: Stack, services: Service
) -> None:
    robot_id, _ = await connected_robot(api, stack, services)
    job_id = await api.job("hello", robot=robot_id, input_args={"name": "Ada", "count": 3})

    job = await api.wait_job(job_id, stack=stack)
    assert job["state"] == "Successful", stack.report()
    assert job["output_args"] == {"greeting": "Hello, Ada!", "lines": 3}
    assert job["error"] is None and job["attempt"] == 1 and job["robot_id"] == robot_id
    assert job["started_at"] is not None and job["ended_at"] is not None
    assert history(job) == [
        (None, "Pending"),
        ("Pending", "Starting"),
        ("Starting", "Running"),
        ("Running", "Successful"),
    ]
    # The script's log lines are stored, with the job's process and robot.
    lines = [m for m in await job_messages(api.ctx, job_id) if m.message.startswith("hello")]
    assert [(m.message, m.fields, m.level) for m in lines] == [
        (f"hello Ada #{n}", {"n": n}, LogLevel.INFO) for n in range(3)
    ]
    assert all(str(m.robot_id) == robot_id and str(m.process_id) == job["process_id"] for m in lines)
    # Free again: the robot is Ready and takes the next job.
    await api.wait_robot(robot_id, "Ready", stack=stack)
    again = await api.wait_job(await api.job("hello", robot=robot_id, input_args={"count": 1}), stack=stack)
    assert again["state"] == "Successful"


async def test_script_that_raises_ends_failed_with_its_error(
    api: Api, stack: Stack, services: Service
) -> None:
    robot_id, _ = await connected_robot(api, stack, services)
    job_id = await api.job("fail", robot=robot_id)

    job = await api.wait_job(job_id, stack=stack)
    assert job["state"] == "Failed"
    assert job["error"] == "RuntimeError: something went wrong on purpose"
    assert history(job) == [
        (None, "Pending"),
        ("Pending", "Starting"),
        ("Starting", "Running"),
        ("Running", "Failed"),
    ]
    logs = await job_messages(api.ctx, job_id)
    assert any(m.message == "about to fail" and m.level == LogLevel.WARNING for m in logs)
    assert any("Traceback" in m.message and m.level == LogLevel.ERROR for m in logs)


async def test_soft_stop_through_the_api_ends_stopped(api: Api, stack: Stack, services: Service) -> None:
    robot_id, _ = await connected_robot(api, stack, services)
    job_id = await api.job("long", robot=robot_id, input_args={"seconds": 60})
    await api.wait_job(job_id, "Running", stack=stack)

    stopping = await api.call("POST", f"/jobs/{job_id}/stop", 202)
    assert stopping["state"] == "Stopping"
    job = await api.wait_job(job_id, stack=stack)
    assert job["state"] == "Stopped", job["error"]
    assert "stopped_at_step" in (job["output_args"] or {})
    assert history(job)[-2:] == [("Running", "Stopping"), ("Stopping", "Stopped")]
    assert any(m.message.startswith("stop requested") for m in await job_messages(api.ctx, job_id))
    await api.wait_robot(robot_id, "Ready", stack=stack)


async def _script_pids(api: Api, job_id: str) -> tuple[int, int]:
    async def started() -> dict[str, Any] | None:
        for m in await job_messages(api.ctx, job_id):
            if m.message == "started" and m.fields:
                return m.fields
        return None

    fields = await eventually(started, 15, "the script's pids in its log")
    return int(fields["pid"]), int(fields["child_pid"])


async def test_script_ignoring_stop_is_interrupted_and_its_process_tree_is_gone(
    api: Api, stack: Stack, services: Service
) -> None:
    robot_id, _ = await connected_robot(api, stack, services)

    # By hand: stop (ignored), then interrupt.
    job_id = await api.job("stubborn", robot=robot_id)
    await api.wait_job(job_id, "Running", stack=stack)
    script_pid, child_pid = await _script_pids(api, job_id)
    assert not gone(script_pid) and not gone(child_pid)
    await api.call("POST", f"/jobs/{job_id}/stop", 202)
    await asyncio.sleep(1.5)
    assert (await api.get_job(job_id))["state"] == "Stopping"  # the script ignored the request
    assert not gone(script_pid)
    await api.call("POST", f"/jobs/{job_id}/interrupt", 202)
    job = await api.wait_job(job_id, stack=stack)
    assert job["state"] == "Interrupted", job["error"]
    assert history(job)[-3:] == [
        ("Running", "Stopping"),
        ("Stopping", "Interrupting"),
        ("Interrupting", "Interrupted"),
    ]
    await eventually(lambda: _both_gone(script_pid, child_pid), 10, "the script and its child killed")

    # By deadline: nobody calls anything; interrupt_after_s ends it.
    await api.wait_robot(robot_id, "Ready", stack=stack)
    job_id = await api.job("stubborn", robot=robot_id, interrupt_after_s=2)
    running = await api.wait_job(job_id, "Running", stack=stack)
    assert running["interrupt_at"] is not None
    script_pid, child_pid = await _script_pids(api, job_id)
    job = await api.wait_job(job_id, timeout=20, stack=stack)
    assert job["state"] == "Interrupted", job["error"]
    assert history(job)[-2:] == [("Running", "Interrupting"), ("Interrupting", "Interrupted")]
    assert job["history"][-2]["actor_type"] == "system"
    assert job["history"][-2]["reason"] == "interrupt deadline passed"
    await eventually(lambda: _both_gone(script_pid, child_pid), 10, "the script and its child killed")


async def _both_gone(*pids: int) -> bool:
    return all(gone(p) for p in pids)


async def test_stop_after_s_is_enforced_by_the_orchestrator(
    api: Api, stack: Stack, services: Service
) -> None:
    robot_id, _ = await connected_robot(api, stack, services)
    job_id = await api.job("long", robot=robot_id, input_args={"seconds": 60}, stop_after_s=2)
    running = await api.wait_job(job_id, "Running", stack=stack)
    assert running["stop_at"] is not None

    job = await api.wait_job(job_id, timeout=20, stack=stack)  # nobody calls stop
    assert job["state"] == "Stopped", job["error"]
    assert history(job)[-3:] == [("Starting", "Running"), ("Running", "Stopping"), ("Stopping", "Stopped")]
    ran, stopping = job["history"][-3], job["history"][-2]
    assert (stopping["actor_type"], stopping["reason"]) == ("system", "stop deadline passed")
    # Not before the deadline, and soon after it (the sweep runs every 0.5 s).
    waited = (datetime.fromisoformat(stopping["at"]) - datetime.fromisoformat(ran["at"])).total_seconds()
    assert 2.0 <= waited < 8, waited
    assert "stopped_at_step" in (job["output_args"] or {})


async def test_robot_killed_mid_job_ends_failed_robot_lost_after_the_lease(
    api: Api, stack: Stack, services: Service
) -> None:
    robot_id, robot = await connected_robot(api, stack, services)
    job_id = await api.job("long", robot=robot_id, input_args={"seconds": 30})
    await api.wait_job(job_id, "Running", stack=stack)
    await eventually(lambda: _has_script(robot), 10, "the script process")

    robot.kill()  # SIGKILL: no goodbye, no report; the script it started is orphaned
    killed = time.monotonic()
    job = await api.wait_job(job_id, timeout=20, stack=stack)
    assert job["state"] == "Failed"
    assert job["error"] == "robot lost"
    assert history(job)[-1] == ("Running", "Failed")
    assert job["history"][-1]["reason"] == "robot lost" and job["history"][-1]["actor_type"] == "system"
    # Not at the disconnect, but once the lease (3 s, renewed by heartbeats until the kill) ran out.
    assert time.monotonic() - killed > 1.0
    robot_after = await api.wait_robot(robot_id, "Disconnected", stack=stack)
    assert robot_after["current_job_id"] is None


async def _has_script(robot: Child) -> bool:
    return bool(robot.remember_descendants())
