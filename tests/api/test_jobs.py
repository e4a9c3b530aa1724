"""The jobs API: create, history, stop / interrupt, idempotency keys, lists, permissions, tenancy.

Processes, versions and robots are written with the ORM factories (their own APIs are tested
elsewhere); jobs are moved to Starting / Running through ``jobflow``, exactly as the scheduler and
the gateway do.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from nats.aio.subscription import Subscription

from rpa_common import jobflow
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import AuditRecord, Job, JobEvent, Process, ProcessVersion, Robot, utcnow
from rpa_common.models.enums import ActorType, JobState, PermissionAction, PermissionObject, RobotRole
from rpa_common.nats import subjects
from rpa_common.nats.messages import JobControl, JobCreated
from rpa_common.service import ServiceContext
from tests.api.factories import make_folder, make_folder_user, make_group, make_process, make_robot
from tests.conftest import Tenant

JOBS = "/api/v1/jobs"


async def setup(ctx: ServiceContext, tenant: Tenant) -> tuple[Process, list[ProcessVersion], Robot]:
    process, versions = await make_process(ctx, tenant.account_id, versions=2)
    robot = await make_robot(ctx, tenant.account_id)
    return process, versions, robot


def body_for(process: Process, robot: Robot, **extra: Any) -> dict[str, Any]:
    return {"process_id": str(process.id), "robot_id": str(robot.id), **extra}


async def create(client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post(JOBS, json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def start_running(ctx: ServiceContext, job_id: uuid.UUID, robot_id: uuid.UUID) -> None:
    """What dispatch and then the gateway do: Pending -> Starting (attempt 1) -> Running."""

    async def work(session: Any) -> None:
        started = await jobflow.transition(
            session,
            job_id,
            JobState.STARTING,
            expected=[JobState.PENDING],
            actor=jobflow.Actor.system(),
            reason="dispatched",
            values={"robot_id": robot_id, "attempt": 1, "lease_expires_at": utcnow() + timedelta(seconds=60)},
        )
        assert started is not None
        running = await jobflow.transition(
            session,
            job_id,
            JobState.RUNNING,
            expected=[JobState.STARTING],
            attempt=1,
            actor=jobflow.Actor(ActorType.ROBOT, robot_id),
            values={"started_at": utcnow()},
        )
        assert running is not None

    await run_in_transaction(ctx.sessions, work)


async def subscribe(ctx: ServiceContext, subject: str) -> Subscription:
    sub = await ctx.nc.subscribe(subject)
    await ctx.nc.flush()  # the server knows the subscription before anything is published
    return sub


async def next_about(sub: Subscription, job_id: str, kind: type[Any], timeout: float = 2.0) -> Any:
    """The next message on ``sub`` about ``job_id`` (other tests share the NATS server)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        assert remaining > 0, f"no {kind.__name__} for job {job_id} within {timeout} s"
        msg = await sub.next_msg(timeout=remaining)
        decoded = kind.decode(msg.data)
        if str(decoded.job_id) == job_id:
            return decoded


async def no_message_about(sub: Subscription, job_id: str, kind: type[Any], wait: float = 0.3) -> None:
    try:
        got = await next_about(sub, job_id, kind, timeout=wait)
    except Exception:  # nothing came (a timeout of next_msg, or our own deadline)
        return
    raise AssertionError(f"unexpected {got!r}")


async def count(ctx: ServiceContext, model: Any, *where: Any) -> int:
    async with ctx.sessions() as session:
        return int(await session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0)


# Creation and history ----------------------------------------------------------------------------


async def test_create_is_pending_with_history_audit_and_event(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    process, versions, robot = await setup(ctx, tenant)
    sub = await subscribe(ctx, subjects.JOB_CREATED)
    try:
        resp = await client.post(
            JOBS,
            json=body_for(process, robot, input_args={"invoice": "A-17", "lines": [1, 2]}, stop_after_s=60),
            headers=tenant.headers,
        )
        assert resp.status_code == 201, resp.text
        job = resp.json()
        assert resp.headers["location"] == f"{JOBS}/{job['id']}"
        assert job["state"] == "Pending"
        assert job["source"] == "api"
        assert job["priority"] == 2
        assert job["max_retries"] == 0
        assert job["attempt"] == 0
        assert job["process_version_id"] == str(versions[-1].id)  # the current version
        assert job["robot_id"] == str(robot.id)
        assert job["robot_group_id"] is None
        assert job["input_args"] == {"invoice": "A-17", "lines": [1, 2]}
        assert job["stop_after_s"] == 60
        assert job["created_by"] == str(tenant.admin_id)
        event = await next_about(sub, job["id"], JobCreated)
        assert event.robot_id == robot.id
        assert event.account_id == tenant.account_id
    finally:
        await sub.unsubscribe()

    detail = (await client.get(f"{JOBS}/{job['id']}", headers=tenant.headers)).json()
    assert detail["state"] == "Pending"
    assert [(h["from_state"], h["to_state"]) for h in detail["history"]] == [(None, "Pending")]
    first = detail["history"][0]
    assert first["actor_type"] == "user"
    assert first["actor_id"] == str(tenant.admin_id)
    assert first["attempt"] == 0
    audits = await count(ctx, AuditRecord, AuditRecord.object_id == job["id"], AuditRecord.action == "create")
    assert audits == 1


async def test_create_variants_and_refusals(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    process, versions, robot = await setup(ctx, tenant)
    h = tenant.headers

    # An explicit (older) version, a group as target, every option given.
    group = await make_group(ctx, tenant.account_id, [robot])
    job = await create(
        client,
        h,
        {
            "process_id": str(process.id),
            "process_version_id": str(versions[0].id),
            "robot_group_id": str(group.id),
            "priority": 3,
            "stop_after_s": 30,
            "interrupt_after_s": 30,
            "max_retries": 10,
        },
    )
    assert job["process_version_id"] == str(versions[0].id)
    assert job["robot_group_id"] == str(group.id)
    assert job["robot_id"] is None
    assert (job["priority"], job["max_retries"], job["interrupt_after_s"]) == (3, 10, 30)

    async def refused(body: dict[str, Any], status: int, *fields: str) -> dict[str, Any]:
        resp = await client.post(JOBS, json=body, headers=h)
        assert resp.status_code == status, resp.text
        assert resp.headers["content-type"].startswith("application/problem+json")
        problem: dict[str, Any] = resp.json()
        named = {e["field"] for e in problem.get("errors", [])}
        assert set(fields) <= named, problem
        return problem

    # A version of another process of the same account.
    _, other_versions = await make_process(ctx, tenant.account_id)
    await refused(
        body_for(process, robot, process_version_id=str(other_versions[0].id)), 422, "process_version_id"
    )
    # No current version.
    bare, _ = await make_process(ctx, tenant.account_id, versions=1, current=False)
    problem = await refused(body_for(bare, robot), 409, "process_id")
    assert "no current version" in problem["detail"]
    # Both or neither target.
    await refused({"process_id": str(process.id)}, 422, "robot_id", "robot_group_id")
    await refused(body_for(process, robot, robot_group_id=str(group.id)), 422, "robot_id", "robot_group_id")
    # Deadlines and ranges.
    await refused(body_for(process, robot, stop_after_s=60, interrupt_after_s=30), 422, "interrupt_after_s")
    await refused(body_for(process, robot, stop_after_s=0), 422, "stop_after_s")
    await refused(body_for(process, robot, priority=4), 422, "priority")
    await refused(body_for(process, robot, priority=0), 422, "priority")
    await refused(body_for(process, robot, max_retries=11), 422, "max_retries")
    await refused(body_for(process, robot, input_args=[1, 2]), 422, "input_args")
    # An inactive robot, a coordinator, unknown ids.
    idle = await make_robot(ctx, tenant.account_id, active=False)
    await refused(body_for(process, idle), 409, "robot_id")
    coordinator = await make_robot(ctx, tenant.account_id, role=RobotRole.COORDINATOR)
    await refused(body_for(process, coordinator), 422, "robot_id")
    await refused(body_for(process, robot, robot_id=str(uuid.uuid4())), 404, "robot_id")
    await refused({"process_id": str(uuid.uuid4()), "robot_id": str(robot.id)}, 404, "process_id")
    await refused({"process_id": str(process.id), "robot_group_id": str(uuid.uuid4())}, 404, "robot_group_id")
    await refused(body_for(process, robot, process_version_id=str(uuid.uuid4())), 404, "process_version_id")
    # Nothing of the refused calls was written: only the first job exists.
    assert await count(ctx, Job, Job.account_id == tenant.account_id) == 1


# Stop and interrupt ------------------------------------------------------------------------------


async def test_stop_pending_ends_it_with_the_actor_recorded(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    process, _, robot = await setup(ctx, tenant)
    user_id, username, h = await tenant.user("Operator")
    job = await create(client, h, body_for(process, robot))

    resp = await client.post(f"{JOBS}/{job['id']}/stop", headers=h)
    assert resp.status_code == 200, resp.text
    assert resp.json()["state"] == "Stopped"
    assert resp.json()["ended_at"] is not None

    detail = (await client.get(f"{JOBS}/{job['id']}", headers=h)).json()
    assert [(e["from_state"], e["to_state"]) for e in detail["history"]] == [
        (None, "Pending"),
        ("Pending", "Stopped"),
    ]
    last = detail["history"][-1]
    assert last["actor_type"] == "user"
    assert last["actor_id"] == str(user_id)
    assert last["reason"] == f"stop requested by {username}"
    assert (
        await count(ctx, AuditRecord, AuditRecord.object_id == job["id"], AuditRecord.action == "stop") == 1
    )

    # A final job cannot be stopped or interrupted again; nothing more is written.
    for command in ("stop", "interrupt"):
        again = await client.post(f"{JOBS}/{job['id']}/{command}", headers=h)
        assert again.status_code == 409, again.text
        assert again.headers["content-type"].startswith("application/problem+json")
        assert "job already ended" in again.json()["detail"]
    assert await count(ctx, JobEvent, JobEvent.job_id == uuid.UUID(job["id"])) == 2


async def test_interrupt_pending_ends_it_interrupted(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    process, _, robot = await setup(ctx, tenant)
    job = await create(client, tenant.headers, body_for(process, robot))
    resp = await client.post(f"{JOBS}/{job['id']}/interrupt", headers=tenant.headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["state"] == "Interrupted"
    detail = (await client.get(f"{JOBS}/{job['id']}", headers=tenant.headers)).json()
    assert detail["history"][-1]["reason"] == f"interrupt requested by {tenant.admin_username}"


async def test_stop_running_tells_the_robot_and_interrupt_escalates(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    process, _, robot = await setup(ctx, tenant)
    h = tenant.headers
    job = await create(client, h, body_for(process, robot))
    await start_running(ctx, uuid.UUID(job["id"]), robot.id)
    url = f"{JOBS}/{job['id']}"

    sub = await subscribe(ctx, subjects.JOB_CONTROL)
    try:
        resp = await client.post(f"{url}/stop", headers=h)
        assert resp.status_code == 202, resp.text
        assert resp.json()["state"] == "Stopping"
        control = await next_about(sub, job["id"], JobControl)
        assert control.command == "stop"
        assert control.robot_id == robot.id
        assert control.attempt == 1
        assert control.account_id == tenant.account_id

        # A repeated stop changes nothing (no second event), and answers the current state.
        events_before = await count(ctx, JobEvent, JobEvent.job_id == uuid.UUID(job["id"]))
        again = await client.post(f"{url}/stop", headers=h)
        assert again.status_code == 202, again.text
        assert again.json()["state"] == "Stopping"
        assert await count(ctx, JobEvent, JobEvent.job_id == uuid.UUID(job["id"])) == events_before
        # ... but the robot is told again (the person retries a command whose message got lost).
        assert (await next_about(sub, job["id"], JobControl)).command == "stop"

        # Interrupt escalates a stop that takes too long.
        resp = await client.post(f"{url}/interrupt", headers=h)
        assert resp.status_code == 202, resp.text
        assert resp.json()["state"] == "Interrupting"
        control = await next_about(sub, job["id"], JobControl)
        assert control.command == "interrupt"
        assert control.attempt == 1

        # A stop after an interrupt is weaker: nothing changes, the robot is not told to stop.
        resp = await client.post(f"{url}/stop", headers=h)
        assert resp.status_code == 200, resp.text
        assert resp.json()["state"] == "Interrupting"
        await no_message_about(sub, job["id"], JobControl)
    finally:
        await sub.unsubscribe()

    detail = (await client.get(url, headers=h)).json()
    assert [(e["from_state"], e["to_state"]) for e in detail["history"]] == [
        (None, "Pending"),
        ("Pending", "Starting"),
        ("Starting", "Running"),
        ("Running", "Stopping"),
        ("Stopping", "Interrupting"),
    ]
    assert detail["history"][-1]["actor_id"] == str(tenant.admin_id)
    assert detail["history"][-1]["attempt"] == 1


async def test_interrupt_running(ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant) -> None:
    process, _, robot = await setup(ctx, tenant)
    job = await create(client, tenant.headers, body_for(process, robot))
    await start_running(ctx, uuid.UUID(job["id"]), robot.id)
    sub = await subscribe(ctx, subjects.JOB_CONTROL)
    try:
        resp = await client.post(f"{JOBS}/{job['id']}/interrupt", headers=tenant.headers)
        assert resp.status_code == 202, resp.text
        assert resp.json()["state"] == "Interrupting"
        assert (await next_about(sub, job["id"], JobControl)).command == "interrupt"
    finally:
        await sub.unsubscribe()


# Idempotency -------------------------------------------------------------------------------------


async def test_idempotency_key_replays_and_refuses_another_body(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    process, _, robot = await setup(ctx, tenant)
    key = f"ci-run-{uuid.uuid4()}"
    h = {**tenant.headers, "Idempotency-Key": key}
    body = body_for(process, robot, input_args={"b": 1, "a": {"y": 2, "x": 1}})

    first = await client.post(JOBS, json=body, headers=h)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers

    # The same body (keys in another order, defaults spelt out) answers the same job.
    same = {"priority": 2, "input_args": {"a": {"x": 1, "y": 2}, "b": 1}, **body_for(process, robot)}
    for replay_body in (body, same):
        again = await client.post(JOBS, json=replay_body, headers=h)
        assert again.status_code == 200, again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["location"] == first.headers["location"]

    other = await client.post(JOBS, json={**body, "priority": 3}, headers=h)
    assert other.status_code == 409, other.text
    assert other.headers["content-type"].startswith("application/problem+json")

    assert await count(ctx, Job, Job.account_id == tenant.account_id) == 1
    assert await count(ctx, JobEvent, JobEvent.account_id == tenant.account_id) == 1
    assert (
        await count(
            ctx, AuditRecord, AuditRecord.account_id == tenant.account_id, AuditRecord.object_type == "job"
        )
        == 1
    )

    # Another key is another job; a key is 1..255 characters.
    fresh = await client.post(JOBS, json=body, headers={**tenant.headers, "Idempotency-Key": key + "-2"})
    assert fresh.status_code == 201
    assert fresh.json()["id"] != first.json()["id"]
    too_long = await client.post(JOBS, json=body, headers={**tenant.headers, "Idempotency-Key": "k" * 256})
    assert too_long.status_code == 422
    assert too_long.json()["errors"][0]["field"].lower() == "idempotency-key"
    assert await count(ctx, Job, Job.account_id == tenant.account_id) == 2


async def test_idempotency_key_holds_under_concurrency(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    process, _, robot = await setup(ctx, tenant)
    h = {**tenant.headers, "Idempotency-Key": f"burst-{uuid.uuid4()}"}
    body = body_for(process, robot)

    answers = await asyncio.gather(*(client.post(JOBS, json=body, headers=h) for _ in range(5)))

    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 200, 200, 200, 201], [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert await count(ctx, Job, Job.account_id == tenant.account_id) == 1
    assert await count(ctx, JobEvent, JobEvent.account_id == tenant.account_id) == 1


# Lists -------------------------------------------------------------------------------------------


async def test_list_filters_sorting_and_pagination(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    process, _, robot = await setup(ctx, tenant)
    other_process, _ = await make_process(ctx, tenant.account_id)
    robot2 = await make_robot(ctx, tenant.account_id)
    group = await make_group(ctx, tenant.account_id, [robot, robot2])
    h = tenant.headers
    before = datetime.now(UTC) - timedelta(seconds=1)

    a = await create(client, h, body_for(process, robot, priority=1))
    b = await create(client, h, body_for(process, robot2, priority=3))
    c = await create(client, h, {"process_id": str(other_process.id), "robot_group_id": str(group.id)})
    d = await create(client, h, body_for(other_process, robot))
    await client.post(f"{JOBS}/{d['id']}/stop", headers=h)  # d: Stopped
    await start_running(ctx, uuid.UUID(b["id"]), robot2.id)  # b: Running

    async def ids(**params: Any) -> list[str]:
        resp = await client.get(JOBS, params=params, headers=h)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert page["total"] == len(page["items"])
        return [j["id"] for j in page["items"]]

    assert set(await ids()) == {a["id"], b["id"], c["id"], d["id"]}
    assert await ids(sort="created_at") == [a["id"], b["id"], c["id"], d["id"]]
    assert await ids() == [d["id"], c["id"], b["id"], a["id"]]  # newest first by default
    assert set(await ids(state="Pending")) == {a["id"], c["id"]}
    assert set(await ids(state=["Running", "Stopped"])) == {b["id"], d["id"]}
    assert set(await ids(process_id=str(other_process.id))) == {c["id"], d["id"]}
    assert set(await ids(robot_id=str(robot.id))) == {a["id"], d["id"]}
    assert set(await ids(robot_group_id=str(group.id))) == {c["id"]}
    assert set(await ids(source="api")) == {a["id"], b["id"], c["id"], d["id"]}
    assert await ids(source="trigger") == []
    by_priority = (await client.get(JOBS, params={"sort": "-priority"}, headers=h)).json()["items"]
    assert [j["priority"] for j in by_priority] == sorted((j["priority"] for j in by_priority), reverse=True)
    assert by_priority[0]["id"] == b["id"]
    assert set(await ids(created_from=before.isoformat())) == {a["id"], b["id"], c["id"], d["id"]}
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await ids(created_from=future) == []
    assert await ids(created_to=before.isoformat()) == []
    for sort in ("state", "started_at", "-ended_at"):
        assert len(await ids(sort=sort)) == 4

    page = (await client.get(JOBS, params={"limit": 3, "offset": 0, "sort": "created_at"}, headers=h)).json()
    assert (page["total"], page["limit"], page["offset"], len(page["items"])) == (4, 3, 0, 3)
    page2 = (await client.get(JOBS, params={"limit": 3, "offset": 3, "sort": "created_at"}, headers=h)).json()
    assert (page2["total"], len(page2["items"])) == (4, 1)
    assert page2["items"][0]["id"] == d["id"]

    # Bad filters are 422s naming the parameter.
    resp = await client.get(
        JOBS, params={"created_from": future, "created_to": before.isoformat()}, headers=h
    )
    assert resp.status_code == 422
    assert {e["field"] for e in resp.json()["errors"]} == {"created_from", "created_to"}
    for params, field in (
        ({"sort": "input_args"}, "sort"),
        ({"state": "Sleeping"}, "state"),
        ({"created_from": "yesterday"}, "created_from"),
        ({"process_id": "nope"}, "process_id"),
    ):
        resp = await client.get(JOBS, params=params, headers=h)
        assert resp.status_code == 422, (params, resp.text)
        # A repeatable parameter is named with the index of the bad value ("state.0").
        assert field in {e["field"].split(".")[0] for e in resp.json()["errors"]}


# Permissions and tenancy -------------------------------------------------------------------------


async def test_permissions(ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant) -> None:
    process, _, robot = await setup(ctx, tenant)
    for role in ("Operator", "Developer", "Administrator"):
        _, _, h = await tenant.user(role)
        await create(client, h, body_for(process, robot))
    job = await create(client, tenant.headers, body_for(process, robot))

    _, _, viewer = await tenant.user("Viewer")
    before = await count(ctx, Job, Job.account_id == tenant.account_id)
    resp = await client.post(JOBS, json=body_for(process, robot), headers=viewer)
    assert resp.status_code == 403
    assert resp.headers["content-type"].startswith("application/problem+json")
    for command in ("stop", "interrupt"):
        resp = await client.post(f"{JOBS}/{job['id']}/{command}", headers=viewer)
        assert resp.status_code == 403
    assert await count(ctx, Job, Job.account_id == tenant.account_id) == before
    # A Viewer reads jobs.
    assert (await client.get(JOBS, headers=viewer)).json()["total"] == before
    detail = await client.get(f"{JOBS}/{job['id']}", headers=viewer)
    assert detail.status_code == 200
    assert detail.json()["state"] == "Pending"
    # Nobody without a token.
    assert (await client.get(JOBS)).status_code == 401


async def test_another_accounts_ids_are_not_found(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    process, _, robot = await setup(ctx, tenant)
    theirs_process, theirs_versions, theirs_robot = await setup(ctx, other_tenant)
    theirs_group = await make_group(ctx, other_tenant.account_id, [theirs_robot])
    theirs = await create(client, other_tenant.headers, body_for(theirs_process, theirs_robot))
    h = tenant.headers

    resp = await client.get(f"{JOBS}/{theirs['id']}", headers=h)
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith("application/problem+json")
    for command in ("stop", "interrupt"):
        resp = await client.post(f"{JOBS}/{theirs['id']}/{command}", headers=h)
        assert resp.status_code == 404
    assert (await client.get(JOBS, headers=h)).json()["total"] == 0
    assert (await client.get(JOBS, params={"process_id": str(theirs_process.id)}, headers=h)).json()[
        "total"
    ] == 0

    for body, field in (
        ({"process_id": str(theirs_process.id), "robot_id": str(robot.id)}, "process_id"),
        (body_for(process, theirs_robot), "robot_id"),
        ({"process_id": str(process.id), "robot_group_id": str(theirs_group.id)}, "robot_group_id"),
        (body_for(process, robot, process_version_id=str(theirs_versions[0].id)), "process_version_id"),
    ):
        resp = await client.post(JOBS, json=body, headers=h)
        assert resp.status_code == 404, resp.text
        assert [e["field"] for e in resp.json()["errors"]] == [field]

    # Their job is untouched.
    async with ctx.sessions() as session:
        job = await session.get(Job, uuid.UUID(theirs["id"]))
        assert job is not None and job.state == JobState.PENDING
    assert await count(ctx, Job, Job.account_id == tenant.account_id) == 0


async def test_folder_restricted_role_sees_and_runs_only_jobs_of_its_folders(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    mine, theirs = await make_folder(ctx, tenant.account_id), await make_folder(ctx, tenant.account_id)
    visible, _ = await make_process(ctx, tenant.account_id, folder_id=mine.id)
    hidden, _ = await make_process(ctx, tenant.account_id, folder_id=theirs.id)
    robot = await make_robot(ctx, tenant.account_id, folder_id=mine.id)
    hidden_robot = await make_robot(ctx, tenant.account_id, folder_id=theirs.id)
    seen = await create(client, tenant.headers, body_for(visible, robot))
    unseen = await create(client, tenant.headers, body_for(hidden, hidden_robot))
    _, h = await make_folder_user(
        ctx,
        tenant.account_id,
        [mine.id],
        [(PermissionObject.JOBS, PermissionAction.READ), (PermissionObject.JOBS, PermissionAction.RUN)],
    )

    page = (await client.get(JOBS, headers=h)).json()
    assert [j["id"] for j in page["items"]] == [seen["id"]]
    assert page["total"] == 1
    assert (await client.get(f"{JOBS}/{unseen['id']}", headers=h)).status_code == 404
    assert (await client.post(f"{JOBS}/{unseen['id']}/stop", headers=h)).status_code == 404
    resp = await client.post(JOBS, json=body_for(hidden, robot), headers=h)
    assert resp.status_code == 404
    assert resp.json()["errors"][0]["field"] == "process_id"
    resp = await client.post(JOBS, json=body_for(visible, hidden_robot), headers=h)
    assert resp.status_code == 404
    assert resp.json()["errors"][0]["field"] == "robot_id"
    assert (await client.post(JOBS, json=body_for(visible, robot), headers=h)).status_code == 201
    assert (await client.post(f"{JOBS}/{seen['id']}/stop", headers=h)).json()["state"] == "Stopped"
