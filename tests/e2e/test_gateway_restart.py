"""A gateway crash mid-job, with the scheduler running: nothing acknowledged is lost, nothing doubles.

The job is created through the API and dispatched by the scheduler process; the gateway process is
killed (SIGKILL) while the script logs, and a new gateway process starts on the same port. The robot
reconnects, replays what was not acknowledged, and the job ends once, with every log line stored
exactly once.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.conftest import Api, Stack, eventually, history, job_messages

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def test_gateway_killed_mid_job_the_robot_reconnects_and_the_job_completes_once(
    api: Api, stack: Stack
) -> None:
    # A lease longer than the gateway's restart: the robot is away for a moment, not lost.
    scheduler = stack.service("scheduler", RPA_JOB_LEASE_S="20")
    gateway = stack.service("gateway", RPA_JOB_LEASE_S="20")
    await stack.start(scheduler, gateway)
    robot_id, key = await api.robot()
    robot = stack.robot(gateway.ws_url, key)
    await api.wait_robot(robot_id, "Ready", stack=stack)

    ids_file = stack.dir / "logged-ids.txt"
    count = 40
    job_id = await api.job(
        "hello", robot=robot_id, input_args={"count": count, "delay_s": 0.05, "ids_file": str(ids_file)}
    )
    await api.wait_job(job_id, "Running", stack=stack)

    async def some_logged() -> bool:
        return len(await job_messages(api.ctx, job_id)) >= 5

    await eventually(some_logged, 15, "the first log lines")
    gateway.kill()  # frames in flight are neither applied nor acknowledged
    await asyncio.sleep(0.8)  # the script keeps logging while no gateway listens
    await stack.restart(gateway)

    job = await api.wait_job(job_id, timeout=40, stack=stack)
    assert job["state"] == "Successful", f"{job['error']}\n{stack.report()}"
    assert job["attempt"] == 1
    assert job["output_args"] == {"greeting": "Hello, world!", "lines": count}
    assert history(job) == [
        (None, "Pending"),
        ("Pending", "Starting"),
        ("Starting", "Running"),
        ("Running", "Successful"),
    ]
    logged = ids_file.read_text().split()
    assert len(logged) == count
    stored = [m for m in await job_messages(api.ctx, job_id) if m.message.startswith("hello")]
    assert sorted(str(m.id) for m in stored) == sorted(logged)  # each line exactly once
    assert [m.fields for m in sorted(stored, key=lambda m: (m.fields or {}).get("n", -1))] == [
        {"n": n} for n in range(count)
    ]
    assert "replaying" in robot.output()
    # Connected to the new gateway process, free, and taking work through the scheduler again.
    await api.wait_robot(robot_id, "Ready", stack=stack)
    again = await api.wait_job(await api.job("hello", robot=robot_id, input_args={"count": 1}), stack=stack)
    assert again["state"] == "Successful"
