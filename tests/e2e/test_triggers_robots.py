"""Triggers whose path goes through robots, every part a real process (scheduler, gateway, robot):

- job completion: a job of process A (``hello``) ends Successful on a real robot, and the trigger
  starts process B (an ``echo`` package) once, with A's outputs as B's inputs, which B runs;
- robot command: ``rpa-robot start-trigger NAME`` (``job.request`` naming a robot command trigger)
  makes the job the trigger describes, which the robot then runs; so does a script's
  ``sdk.start_trigger(NAME, **args)`` (the request journaled by its robot).
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import uuid
import zipfile
from typing import Any

import pytest
import sqlalchemy as sa

from rpa_common.models import Job
from rpa_common.models.enums import JobSource
from tests.conftest import ROOT
from tests.e2e.conftest import API, Api, Service, Stack, clean_env, eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

ECHO = """from rpa_robot import sdk

sdk.set_output(**{"got_" + k: v for k, v in sdk.input_args().items()})
"""


STARTER = """from rpa_robot import sdk

sdk.set_output(started=sdk.start_trigger("Greet", {"name": "Sdk"}))
"""


def _zip(name: str, script: str = ECHO) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("rpa.json", json.dumps({"name": name, "version": "1.0.0", "entry_point": "main.py"}))
        zf.writestr("main.py", script)
    return buf.getvalue()


@pytest.fixture
async def gateway(stack: Stack) -> Service:
    # Leases no test here is about: long enough for a machine loaded by parallel suites.
    lease = {"RPA_JOB_LEASE_S": "30"}
    scheduler, gateway = stack.service("scheduler", settings=lease), stack.service("gateway", settings=lease)
    await stack.start(scheduler, gateway)
    return gateway


async def _robot(api: Api, stack: Stack, gateway: Service) -> tuple[str, str]:
    robot_id, key = await api.robot()
    stack.robot(gateway.ws_url, key)
    await api.wait_robot(robot_id, "Ready", timeout=60, stack=stack)
    return robot_id, key


async def _publish_echo(api: Api, script: str = ECHO) -> str:
    r = await api.client.post(
        f"{API}/processes/publish",
        files={"package": ("echo.zip", _zip(f"echo-{uuid.uuid4().hex[:6]}", script), "application/zip")},
        headers=api.tenant.headers,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["process"]["id"])


async def _jobs_of_process(api: Api, process_id: str) -> list[Job]:
    async with api.ctx.sessions() as session:
        rows = await session.execute(sa.select(Job).where(Job.process_id == uuid.UUID(process_id)))
        return list(rows.scalars())


async def test_job_completion_passes_outputs_to_the_next_process(
    api: Api, stack: Stack, gateway: Service
) -> None:
    robot_id, _ = await _robot(api, stack, gateway)
    hello_id = await api.publish("hello")
    echo_id = await _publish_echo(api)
    trigger = await api.call(
        "POST",
        "/triggers",
        201,
        json={
            "name": "after hello",
            "kind": "job_completed",
            "process_id": echo_id,
            "source_process_id": hello_id,
            "completion_states": ["Successful"],
            "robot_id": robot_id,
            "input_args": {"from": "chain"},
        },
    )
    first = await api.job("hello", robot=robot_id, input_args={"name": "Ada", "count": 2})
    ended = await api.wait_job(first, timeout=120, stack=stack)
    assert ended["state"] == "Successful", (ended["error"], ended["history"], stack.report())

    async def chained() -> list[Job] | None:
        jobs = await _jobs_of_process(api, echo_id)
        return jobs or None

    [b] = await eventually(chained, 60, "the chained job")
    assert b.parent_job_id == uuid.UUID(first) and b.source == JobSource.CHAIN
    assert b.trigger_id == uuid.UUID(trigger["id"])
    assert b.input_args == {"from": "chain", "greeting": "Hello, Ada!", "lines": 2}
    done = await api.wait_job(str(b.id), timeout=120, stack=stack)
    assert done["state"] == "Successful", stack.report()
    assert done["output_args"] == {"got_from": "chain", "got_greeting": "Hello, Ada!", "got_lines": 2}
    # Exactly once; and a job of A that fails does not fire a trigger on Successful only.
    assert len(await _jobs_of_process(api, echo_id)) == 1
    got = await api.call("GET", f"/triggers/{trigger['id']}", 200)
    assert got["last_job_id"] == str(b.id) and got["last_result"] == "created"


async def test_robot_command_trigger_from_a_real_robot(api: Api, stack: Stack, gateway: Service) -> None:
    robot_id, key = await _robot(api, stack, gateway)
    hello_id = await api.publish("hello")
    await api.call(
        "POST",
        "/triggers",
        201,
        json={
            "name": "Greet",
            "kind": "robot",
            "process_id": hello_id,
            "priority": 3,
            "input_args": {"count": 1, "name": "Trig"},
        },
    )

    def start_trigger(name: str) -> subprocess.CompletedProcess[bytes]:
        argv = [sys.executable, "-m", "rpa_robot", "start-trigger", name, "--gateway", gateway.ws_url]
        argv += ["--input", '{"name": "Bob"}']
        return subprocess.run(
            argv, cwd=ROOT, env=clean_env(RPA_ROBOT_KEY=key), capture_output=True, timeout=60, check=False
        )

    proc = await asyncio.to_thread(start_trigger, "greet")
    assert proc.returncode == 0, proc.stderr.decode()
    job_id = json.loads(proc.stdout)["job_id"]
    job: dict[str, Any] = await api.wait_job(job_id, timeout=120, stack=stack)
    assert job["state"] == "Successful", stack.report()
    assert job["robot_id"] == robot_id and job["priority"] == 3 and job["source"] == "robot"
    assert job["input_args"] == {"count": 1, "name": "Bob"}
    assert job["output_args"] == {"greeting": "Hello, Bob!", "lines": 1}
    missing = await asyncio.to_thread(start_trigger, "no-such-trigger")
    assert missing.returncode == 1 and b"no robot command trigger named" in missing.stderr


async def test_a_script_fires_a_robot_command_trigger(api: Api, stack: Stack, gateway: Service) -> None:
    robot_id, _ = await _robot(api, stack, gateway)
    hello_id = await api.publish("hello")
    starter_id = await _publish_echo(api, STARTER)
    await api.call(
        "POST",
        "/triggers",
        201,
        json={"name": "Greet", "kind": "robot", "process_id": hello_id, "input_args": {"count": 1}},
    )
    created = await api.call("POST", "/jobs", 201, json={"process_id": starter_id, "robot_id": robot_id})
    starter = await api.wait_job(created["id"], timeout=120, stack=stack)
    assert starter["state"] == "Successful", (starter["error"], stack.report())
    started = starter["output_args"]["started"]
    job = await api.wait_job(started, timeout=120, stack=stack)
    assert job["state"] == "Successful", stack.report()
    assert job["source"] == "robot" and job["robot_id"] == robot_id
    assert job["output_args"] == {"greeting": "Hello, Sdk!", "lines": 1}
