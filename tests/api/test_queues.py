"""Queues: CRUD with every setting, names, folders, permissions, delete while tasks are In Progress,
statistics, another account's queue."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import sqlalchemy as sa

from rpa_common import taskflow
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import AuditRecord, Queue, Robot, Task
from rpa_common.models.base import utcnow
from rpa_common.models.enums import RobotRole, TaskState
from rpa_common.security import make_key
from tests.conftest import Tenant

QUEUES = "/api/v1/queues"


async def create_queue(client: httpx.AsyncClient, tenant: Tenant, **body: Any) -> dict[str, Any]:
    body.setdefault("name", f"queue-{uuid.uuid4().hex[:8]}")
    r = await client.post(QUEUES, json=body, headers=tenant.headers)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


async def add_robot(tenant: Tenant) -> uuid.UUID:
    rid = uuid.uuid4()
    key = make_key("rbk")

    async def work(session: Any) -> None:
        session.add(
            Robot(
                id=rid,
                account_id=tenant.account_id,
                name=f"robot-{rid.hex[:8]}",
                role=RobotRole.ATTENDED,
                key_prefix=key.prefix,
                key_hash=key.hash,
            )
        )

    await run_in_transaction(tenant.ctx.sessions, work)
    return rid


async def robot_takes(tenant: Tenant, queue_id: str, robot_id: uuid.UUID) -> Task | None:
    async def work(session: Any) -> Task | None:
        queue = await session.get(Queue, uuid.UUID(queue_id))
        return await taskflow.take_next(
            session, account_id=tenant.account_id, queue=queue, robot_id=robot_id, job_id=None
        )

    return await run_in_transaction(tenant.ctx.sessions, work)


async def robot_finishes(tenant: Tenant, task: Task, robot_id: uuid.UUID, outcome: TaskState) -> None:
    await run_in_transaction(
        tenant.ctx.sessions,
        lambda s: taskflow.finish(
            s,
            account_id=tenant.account_id,
            task_id=task.id,
            token=task.lock_token,
            robot_id=robot_id,
            outcome=outcome,
        ),
    )


async def test_create_read_update_list_delete(client: httpx.AsyncClient, tenant: Tenant) -> None:
    queue = await create_queue(
        client,
        tenant,
        name="Invoices",
        description="incoming invoices",
        created_abandon_s=3600,
        in_progress_abandon_s=600,
        max_retries=3,
        fail_on_job_failed=False,
        retry_failed_business=True,
        retry_abandoned=True,
        unique_task_names=True,
    )
    assert queue["created_abandon_s"] == 3600 and queue["in_progress_abandon_s"] == 600
    assert queue["max_retries"] == 3 and queue["fail_on_job_failed"] is False
    assert queue["fail_on_job_stopped"] is True and queue["retry_failed_application"] is True
    assert queue["retry_failed_business"] is True and queue["unique_task_names"] is True
    got = await client.get(f"{QUEUES}/{queue['id']}", headers=tenant.headers)
    assert got.status_code == 200 and got.json() == queue

    r = await client.patch(
        f"{QUEUES}/{queue['id']}",
        json={"description": "changed", "created_abandon_s": None, "max_retries": 1},
        headers=tenant.headers,
    )
    assert r.status_code == 200, r.text
    assert r.json()["description"] == "changed" and r.json()["created_abandon_s"] is None
    assert r.json()["max_retries"] == 1

    await create_queue(client, tenant, name="Payments")
    r = await client.get(QUEUES, params={"name": "voic"}, headers=tenant.headers)
    assert [q["name"] for q in r.json()["items"]] == ["Invoices"] and r.json()["total"] == 1
    r = await client.get(QUEUES, params={"sort": "-name", "limit": 1}, headers=tenant.headers)
    assert [q["name"] for q in r.json()["items"]] == ["Payments"] and r.json()["total"] == 2

    async with tenant.ctx.sessions() as session:
        actions = (
            (
                await session.execute(
                    sa.select(AuditRecord.action)
                    .where(AuditRecord.object_id == queue["id"])
                    .order_by(AuditRecord.at)
                )
            )
            .scalars()
            .all()
        )
    assert actions == ["create", "update"]

    r = await client.delete(f"{QUEUES}/{queue['id']}", headers=tenant.headers)
    assert r.status_code == 204
    assert (await client.get(f"{QUEUES}/{queue['id']}", headers=tenant.headers)).status_code == 404


async def test_names_unique_any_case_and_bad_settings(client: httpx.AsyncClient, tenant: Tenant) -> None:
    await create_queue(client, tenant, name="Orders")
    r = await client.post(QUEUES, json={"name": "orders"}, headers=tenant.headers)
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "name"
    for body, field in (
        ({"name": "x", "max_retries": -1}, "max_retries"),
        ({"name": "x", "created_abandon_s": 0}, "created_abandon_s"),
        ({"name": "x", "in_progress_abandon_s": "soon"}, "in_progress_abandon_s"),
        ({"name": "x", "unknown": 1}, "unknown"),
        ({"name": ""}, "name"),
    ):
        r = await client.post(QUEUES, json=body, headers=tenant.headers)
        assert r.status_code == 422, (body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert field in [e["field"] for e in r.json()["errors"]], r.json()
    r = await client.get(QUEUES, headers=tenant.headers)
    assert r.json()["total"] == 1


async def test_unique_names_turned_on_only_while_empty(client: httpx.AsyncClient, tenant: Tenant) -> None:
    queue = await create_queue(client, tenant)
    r = await client.post(f"{QUEUES}/{queue['id']}/tasks", json={"name": "a"}, headers=tenant.headers)
    assert r.status_code == 201
    r = await client.patch(
        f"{QUEUES}/{queue['id']}", json={"unique_task_names": True}, headers=tenant.headers
    )
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "unique_task_names"
    other = await create_queue(client, tenant, unique_task_names=True)
    await client.post(f"{QUEUES}/{other['id']}/tasks", json={"name": "a"}, headers=tenant.headers)
    r = await client.patch(
        f"{QUEUES}/{other['id']}", json={"unique_task_names": False}, headers=tenant.headers
    )
    assert r.status_code == 200
    r = await client.post(f"{QUEUES}/{other['id']}/tasks", json={"name": "A"}, headers=tenant.headers)
    assert r.status_code == 201  # duplicates allowed again


async def test_delete_refused_while_tasks_in_progress(client: httpx.AsyncClient, tenant: Tenant) -> None:
    queue = await create_queue(client, tenant)
    robot = await add_robot(tenant)
    await client.post(f"{QUEUES}/{queue['id']}/tasks", json={"name": "t"}, headers=tenant.headers)
    task = await robot_takes(tenant, queue["id"], robot)
    assert task is not None
    r = await client.delete(f"{QUEUES}/{queue['id']}", headers=tenant.headers)
    assert r.status_code == 409 and "In Progress" in r.json()["detail"]
    assert (await client.get(f"{QUEUES}/{queue['id']}", headers=tenant.headers)).status_code == 200
    await robot_finishes(tenant, task, robot, TaskState.SUCCESSFUL)
    assert (await client.delete(f"{QUEUES}/{queue['id']}", headers=tenant.headers)).status_code == 204
    async with tenant.ctx.sessions() as session:
        assert await session.get(Task, task.id) is None  # its tasks went with it


async def test_another_accounts_queue_is_404(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    queue = await create_queue(client, other_tenant)
    path = f"{QUEUES}/{queue['id']}"
    for method, url, body in (
        ("GET", path, None),
        ("PATCH", path, {"description": "mine"}),
        ("DELETE", path, None),
        ("GET", f"{path}/stats", None),
        ("GET", f"{path}/tasks", None),
        ("POST", f"{path}/tasks", {"name": "x"}),
        ("POST", f"{path}/tasks/bulk", {"tasks": [{"name": "x"}]}),
    ):
        r = await client.request(method, url, json=body, headers=tenant.headers)
        assert r.status_code == 404, (method, url, r.text)
    r = await client.post(
        f"{path}/tasks/csv", files={"file": ("t.csv", b"name\na\n", "text/csv")}, headers=tenant.headers
    )
    assert r.status_code == 404, r.text
    r = await client.get(QUEUES, headers=tenant.headers)
    assert r.json()["total"] == 0
    got = (await client.get(path, headers=other_tenant.headers)).json()
    assert (
        got["description"] == ""
        and (await client.get(f"{path}/tasks", headers=other_tenant.headers)).json()["total"] == 0
    )


async def test_permissions(client: httpx.AsyncClient, tenant: Tenant) -> None:
    queue = await create_queue(client, tenant)
    _, _, viewer = await tenant.user("Viewer")
    _, _, operator = await tenant.user("Operator")
    assert (await client.get(f"{QUEUES}/{queue['id']}", headers=viewer)).status_code == 200
    assert (await client.post(QUEUES, json={"name": "v"}, headers=viewer)).status_code == 403
    assert (
        await client.post(f"{QUEUES}/{queue['id']}/tasks", json={"name": "v"}, headers=viewer)
    ).status_code == 403
    # An operator works queue items but does not change queues.
    assert (
        await client.post(f"{QUEUES}/{queue['id']}/tasks", json={"name": "o"}, headers=operator)
    ).status_code == 201
    assert (await client.delete(f"{QUEUES}/{queue['id']}", headers=operator)).status_code == 403


async def test_stats(client: httpx.AsyncClient, tenant: Tenant) -> None:
    queue = await create_queue(client, tenant)
    robot = await add_robot(tenant)
    r = await client.post(
        f"{QUEUES}/{queue['id']}/tasks/bulk",
        json={"tasks": [{"name": f"t{i}"} for i in range(6)]},
        headers=tenant.headers,
    )
    assert r.status_code == 201
    ids = [uuid.UUID(t["id"]) for t in r.json()["items"]]
    now = utcnow()
    # Four tasks taken; three end (two Successful after 10 and 20 s, one Failed after 30 s).
    for i, outcome, took in (
        (0, TaskState.SUCCESSFUL, 10),
        (1, TaskState.SUCCESSFUL, 20),
        (2, TaskState.FAILED_BUSINESS, 30),
    ):
        task = await robot_takes(tenant, queue["id"], robot)
        assert task is not None and task.id == ids[i]
        await robot_finishes(tenant, task, robot, outcome)

        async def backdate(session: Any, task_id: uuid.UUID = task.id, took: int = took) -> None:
            await session.execute(
                sa.update(Task)
                .where(Task.id == task_id)
                .values(started_at=now - timedelta(seconds=took + 5), ended_at=now - timedelta(seconds=5))
            )

        await run_in_transaction(tenant.ctx.sessions, backdate)
    assert await robot_takes(tenant, queue["id"], robot) is not None

    async def old_waiting(session: Any) -> None:
        await session.execute(
            sa.update(Task).where(Task.id == ids[4]).values(created_at=now - timedelta(seconds=120))
        )

    await run_in_transaction(tenant.ctx.sessions, old_waiting)
    r = await client.get(f"{QUEUES}/{queue['id']}/stats", params={"window_s": 600}, headers=tenant.headers)
    assert r.status_code == 200, r.text
    stats = r.json()
    assert stats["counts"] == {
        "Created": 2,
        "In Progress": 1,
        "Successful": 2,
        "Failed (Application)": 0,
        "Failed (Business)": 1,
        "Postponed": 0,
        "Abandoned": 0,
    }
    assert stats["ended"] == 3 and stats["successful"] == 2 and stats["window_s"] == 600
    assert abs(stats["throughput_per_min"] - 3 / 10) < 1e-6
    assert abs(stats["mean_processing_s"] - 20.0) < 0.01
    assert 119 <= stats["oldest_waiting_age_s"] < 200
    r = await client.get(f"{QUEUES}/{queue['id']}/stats", params={"window_s": 1}, headers=tenant.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "window_s"
    empty = await create_queue(client, tenant)
    stats = (await client.get(f"{QUEUES}/{empty['id']}/stats", headers=tenant.headers)).json()
    assert stats["ended"] == 0 and stats["mean_processing_s"] is None and stats["oldest_waiting_at"] is None


async def test_delete_a_queue_with_retry_chains_and_history(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    queue = await create_queue(client, tenant, max_retries=2, retry_failed_application=True)
    robot = await add_robot(tenant)
    await client.post(f"{QUEUES}/{queue['id']}/tasks", json={"name": "chain"}, headers=tenant.headers)
    for _ in range(3):
        task = await robot_takes(tenant, queue["id"], robot)
        assert task is not None
        await robot_finishes(tenant, task, robot, TaskState.FAILED_APPLICATION)
    async with tenant.ctx.sessions() as session:
        chain = (
            (
                await session.execute(
                    sa.select(Task.retry_number).where(Task.queue_id == uuid.UUID(queue["id"]))
                )
            )
            .scalars()
            .all()
        )
    assert sorted(chain) == [0, 1, 2]
    assert (await client.delete(f"{QUEUES}/{queue['id']}", headers=tenant.headers)).status_code == 204
    async with tenant.ctx.sessions() as session:
        left = await session.scalar(
            sa.select(sa.func.count()).select_from(Task).where(Task.queue_id == uuid.UUID(queue["id"]))
        )
    assert left == 0


async def test_folder_limited_role_sees_only_its_queues(client: httpx.AsyncClient, tenant: Tenant) -> None:
    mine = (await client.post("/api/v1/folders", json={"name": "Mine"}, headers=tenant.headers)).json()
    hidden = (await client.post("/api/v1/folders", json={"name": "Hidden"}, headers=tenant.headers)).json()
    headers = await tenant.folder_user(
        "Queue workers",
        [
            {"object": o, "action": a}
            for o in ("queues", "tasks")
            for a in ("read", "create", "update", "delete")
        ],
        mine["id"],
    )
    visible = await create_queue(client, tenant, folder_id=mine["id"])
    secret = await create_queue(client, tenant, folder_id=hidden["id"])
    listing = (await client.get(QUEUES, headers=headers)).json()
    assert [q["id"] for q in listing["items"]] == [visible["id"]]
    assert (
        await client.post(f"{QUEUES}/{visible['id']}/tasks", json={"name": "a"}, headers=headers)
    ).status_code == 201
    for method, url, body in (
        ("GET", f"{QUEUES}/{secret['id']}", None),
        ("GET", f"{QUEUES}/{secret['id']}/tasks", None),
        ("POST", f"{QUEUES}/{secret['id']}/tasks", {"name": "a"}),
    ):
        r = await client.request(method, url, json=body, headers=headers)
        assert r.status_code == 404, (method, url)
    # A queue may be made, or moved, only into a folder of the caller's roles.
    r = await client.post(QUEUES, json={"name": "elsewhere", "folder_id": hidden["id"]}, headers=headers)
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "folder_id"
    r = await client.patch(f"{QUEUES}/{visible['id']}", json={"folder_id": hidden["id"]}, headers=headers)
    assert r.status_code == 403
    r = await client.post(
        QUEUES, json={"name": "nowhere", "folder_id": str(uuid.uuid4())}, headers=tenant.headers
    )
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "folder_id"
