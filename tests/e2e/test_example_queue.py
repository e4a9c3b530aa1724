"""The issue's acceptance, end to end: a person creates a queue and a credential through the API,
uploads the tasks as CSV, and runs the example process (``examples/queue``) as jobs on two real
robot processes; every task ends Successful, each taken once, and the password is in no log: not
in the job logs, not in any service's or robot's output."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import sqlalchemy as sa

from rpa_common.models import RobotMessage, TaskEvent
from rpa_common.models.enums import TaskState
from tests.e2e.conftest import Api, Stack

PASSWORD = "Corr3ct-Horse-Battery-Staple!e2e"
TASKS = 300


async def test_two_robots_work_an_uploaded_queue_with_a_credential(
    stack: Stack, api: Api, tmp_path: Path
) -> None:
    gateway = stack.service("gateway")
    await stack.start(stack.service("scheduler"), gateway)
    queue = await api.call("POST", "/queues", 201, json={"name": f"invoices-{uuid.uuid4().hex[:6]}"})
    rows = ["name,amount,customer"] + [f"INV-{n:04d},{n % 97 + 0.5},c{n % 7}" for n in range(TASKS)]
    uploaded = await api.call(
        "POST",
        f"/queues/{queue['id']}/tasks/csv",
        201,
        files={"file": ("tasks.csv", ("\n".join(rows) + "\n").encode(), "text/csv")},
    )
    assert uploaded["added"] == TASKS
    group = await api.call("POST", "/resource-groups", 201, json={"name": f"erp-{uuid.uuid4().hex[:6]}"})
    cred = await api.call(
        "POST", "/resources", 201, json={"group_id": group["id"], "name": "erp-login", "kind": "credentials"}
    )
    await api.call(
        "PUT",
        f"/resources/{cred['id']}/values",
        201,
        json={"scope": "all", "login": "svc-erp", "password": PASSWORD},
    )

    robots = [await api.robot() for _ in range(2)]
    for _, key in robots:
        stack.robot(gateway.ws_url, key)
    for robot_id, _ in robots:
        await api.wait_robot(robot_id, "Ready", stack=stack)
    jobs = [
        await api.job("queue", robot=robot_id, input_args={"queue": queue["name"], "credential": "erp-login"})
        for robot_id, _ in robots
    ]
    done = [await api.wait_job(job_id, timeout=180, stack=stack) for job_id in jobs]
    assert [j["state"] for j in done] == ["Successful", "Successful"], [j.get("error") for j in done]
    worked = [j["output_args"]["done"] for j in done]
    assert sum(worked) == TASKS and all(
        j["output_args"]["failed"] == j["output_args"]["lost"] == 0 for j in done
    )

    stats = await api.call("GET", f"/queues/{queue['id']}/stats", 200)
    assert stats["counts"][TaskState.SUCCESSFUL.value] == TASKS, stats["counts"]
    assert sum(stats["counts"].values()) == TASKS
    async with api.ctx.sessions() as session:
        takes = (
            await session.execute(
                sa.select(TaskEvent.task_id, sa.func.count())
                .where(
                    TaskEvent.account_id == api.tenant.account_id, TaskEvent.to_state == TaskState.IN_PROGRESS
                )
                .group_by(TaskEvent.task_id)
            )
        ).all()
        lines = (
            await session.execute(
                sa.select(RobotMessage.message, RobotMessage.fields).where(
                    RobotMessage.account_id == api.tenant.account_id
                )
            )
        ).all()
    assert len(takes) == TASKS and all(n == 1 for _, n in takes)  # each taken once
    job_log = "\n".join(f"{m} {f}" for m, f in lines)
    assert "logged in" in job_log and "svc-erp" in job_log
    assert PASSWORD not in job_log
    await asyncio.sleep(0.2)
    for path in stack.log_files():
        assert PASSWORD not in path.read_text(errors="replace"), f"the password is in {path.name}"
    assert stack.log_files(), "no service or robot wrote a log"
