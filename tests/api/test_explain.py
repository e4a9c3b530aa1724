"""``GET /jobs/{id}/explain``: why a job is still Pending, one test per reason (issue 13).

Jobs are made through the API; robots, terminal servers, sessions and licenses are written with the
ORM in the states a gateway, a coordinator and the scheduler would leave them in.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import sqlalchemy as sa

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import (
    License,
    Robot,
    TerminalServer,
    TerminalSession,
    UnattendedAccount,
    utcnow,
)
from rpa_common.models.enums import (
    JobState,
    LicenseKind,
    PermissionAction,
    PermissionObject,
    RobotRole,
    RobotStatus,
    SessionState,
)
from rpa_common.service import ServiceContext
from tests.api.factories import make_folder, make_folder_user, make_group, make_process, make_robot
from tests.api.test_jobs import JOBS, create, start_running
from tests.conftest import Tenant

GW = "gw-explain"


def ready(**values: Any) -> dict[str, Any]:
    """A robot's columns while a gateway holds it, Ready."""
    return {"status": RobotStatus.READY, "gateway_id": GW, "connected_at": utcnow(), **values}


async def set_row(ctx: ServiceContext, model: Any, row_id: uuid.UUID, **values: Any) -> None:
    async def work(session: Any) -> None:
        await session.execute(sa.update(model).where(model.id == row_id).values(**values))

    await run_in_transaction(ctx.sessions, work)


async def add(ctx: ServiceContext, *rows: Any) -> None:
    async def work(session: Any) -> None:
        for row in rows:
            session.add(row)
            await session.flush()

    await run_in_transaction(ctx.sessions, work)


async def explain(client: httpx.AsyncClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    resp = await client.get(f"{JOBS}/{job_id}/explain", headers=headers)
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    assert data["job_id"] == job_id
    return data


def codes(data: dict[str, Any]) -> list[str]:
    return [r["code"] for r in data["reasons"]]


async def job_on(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant, robot: Robot | None = None, **body: Any
) -> str:
    process, _ = await make_process(ctx, tenant.account_id)
    target = {"robot_id": str(robot.id)} if robot is not None else {}
    job = await create(client, tenant.headers, {"process_id": str(process.id), **target, **body})
    return str(job["id"])


# Nothing blocks --------------------------------------------------------------------------------


async def test_a_free_connected_robot_means_dispatching_and_older_jobs_queue_ahead(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    robot = await make_robot(ctx, tenant.account_id, **ready())
    first = await job_on(ctx, client, tenant, robot)
    data = await explain(client, tenant.headers, first)
    assert data["state"] == "Pending" and data["waiting"] is True
    assert codes(data) == ["dispatching"]
    assert data["reasons"][0]["jobs_ahead"] == 0

    second = await job_on(ctx, client, tenant, robot)
    third = await job_on(ctx, client, tenant, robot)
    [queued] = (await explain(client, tenant.headers, third))["reasons"]
    assert queued["code"] == "queued" and queued["jobs_ahead"] == 2
    assert "queued behind 2 earlier Pending jobs" in queued["message"]
    assert (await explain(client, tenant.headers, second))["reasons"][0]["jobs_ahead"] == 1
    # A high-priority job goes first whatever its age.
    urgent = await job_on(ctx, client, tenant, robot, priority=3)
    assert codes(await explain(client, tenant.headers, urgent)) == ["dispatching"]
    assert (await explain(client, tenant.headers, first))["reasons"][0]["jobs_ahead"] == 1
    # A group holding the robot competes for it too.
    group = await make_group(ctx, tenant.account_id, [robot])
    grouped = await job_on(ctx, client, tenant, robot_group_id=str(group.id))
    assert (await explain(client, tenant.headers, grouped))["reasons"][0]["jobs_ahead"] == 4


# The job's robot --------------------------------------------------------------------------------


async def test_the_robot_busy_with_another_job_names_that_job(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    robot = await make_robot(ctx, tenant.account_id, **ready())
    running = await job_on(ctx, client, tenant, robot)
    await start_running(ctx, uuid.UUID(running), robot.id)
    await set_row(ctx, Robot, robot.id, current_job_id=uuid.UUID(running), status=RobotStatus.WORKING)
    waiting = await job_on(ctx, client, tenant, robot)
    data = await explain(client, tenant.headers, waiting)
    [reason] = data["reasons"]
    assert reason["code"] == "robot_busy"
    assert reason["busy_with_job_id"] == running
    assert reason["robot_id"] == str(robot.id) and reason["robot_status"] == "Working"
    assert running in reason["message"] and robot.name in reason["message"]


async def test_an_inactive_robot(ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant) -> None:
    robot = await make_robot(ctx, tenant.account_id, **ready())
    job = await job_on(ctx, client, tenant, robot)
    await set_row(ctx, Robot, robot.id, is_active=False)
    assert codes(await explain(client, tenant.headers, job)) == ["robot_inactive"]


async def test_a_disconnected_attended_robot(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    robot = await make_robot(ctx, tenant.account_id)  # Disconnected, as a new robot is
    job = await job_on(ctx, client, tenant, robot)
    [reason] = (await explain(client, tenant.headers, job))["reasons"]
    assert reason["code"] == "robot_disconnected"
    assert reason["robot_status"] == "Disconnected"
    assert "not connected" in reason["message"]


async def test_an_unlicensed_robot_says_why_with_the_seats(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await add(
        ctx,
        License(
            id=uuid.uuid4(),
            account_id=tenant.account_id,
            name="one seat",
            kind=LicenseKind.ATTENDED,
            capacity=1,
            key="test-key",
        ),
    )
    await make_robot(ctx, tenant.account_id, **ready())  # holds the only seat
    why = "all 1 Attended or Attended Floating license seats are in use"
    robot = await make_robot(
        ctx, tenant.account_id, status=RobotStatus.UNLICENSED, status_reason=why, gateway_id=GW
    )
    job = await job_on(ctx, client, tenant, robot)
    [reason] = (await explain(client, tenant.headers, job))["reasons"]
    assert reason["code"] == "robot_unlicensed"
    assert reason["status_reason"] == why and why in reason["message"]
    assert (reason["license_capacity"], reason["license_in_use"]) == (1, 1)
    assert reason["license_kinds"] == "Attended or Attended Floating"


# A robot group ----------------------------------------------------------------------------------


async def test_no_robot_of_the_group_ready_lists_the_robots(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    busy = await make_robot(ctx, tenant.account_id, **ready(status=RobotStatus.WORKING))
    gone = await make_robot(ctx, tenant.account_id)
    unlicensed = await make_robot(
        ctx, tenant.account_id, status=RobotStatus.UNLICENSED, status_reason="the Attended license expired"
    )
    other = await job_on(ctx, client, tenant, busy)
    await start_running(ctx, uuid.UUID(other), busy.id)
    await set_row(ctx, Robot, busy.id, current_job_id=uuid.UUID(other))
    group = await make_group(ctx, tenant.account_id, [busy, gone, unlicensed])
    job = await job_on(ctx, client, tenant, robot_group_id=str(group.id))
    [reason] = (await explain(client, tenant.headers, job))["reasons"]
    assert reason["code"] == "no_robot_ready"
    assert reason["robot_group_id"] == str(group.id)
    robots = {r["robot_id"]: r for r in reason["robots"]}
    assert robots[str(busy.id)]["status"] == "Working"
    assert robots[str(busy.id)]["busy_with_job_id"] == other
    assert robots[str(gone.id)]["status"] == "Disconnected"
    assert robots[str(unlicensed.id)]["status"] == "Unlicensed"
    assert robots[str(unlicensed.id)]["status_reason"] == "the Attended license expired"
    assert f"busy with job {other}" in reason["message"]

    # One member comes free and connected: the job goes next.
    free = await make_robot(ctx, tenant.account_id, **ready())
    group2 = await make_group(ctx, tenant.account_id, [free, gone])
    job2 = await job_on(ctx, client, tenant, robot_group_id=str(group2.id))
    assert codes(await explain(client, tenant.headers, job2)) == ["dispatching"]
    empty = await make_group(ctx, tenant.account_id, [])
    job3 = await job_on(ctx, client, tenant, robot_group_id=str(empty.id))
    assert codes(await explain(client, tenant.headers, job3)) == ["group_empty"]


# Unattended robots: the session path --------------------------------------------------------------


async def unattended_setup(
    ctx: ServiceContext, tenant: Tenant, *, coordinator_status: RobotStatus | None, max_sessions: int = 5
) -> tuple[Robot, uuid.UUID, uuid.UUID, uuid.UUID | None]:
    """An unattended robot (not connected) with an account on a terminal server; the server's
    coordinator in ``coordinator_status`` (None: no coordinator). (robot, server id, account id,
    coordinator id)."""
    coordinator_id = None
    if coordinator_status is not None:
        connected = ready(status=coordinator_status) if coordinator_status == RobotStatus.READY else {}
        coordinator = await make_robot(ctx, tenant.account_id, role=RobotRole.COORDINATOR, **connected)
        coordinator_id = coordinator.id
    robot = await make_robot(ctx, tenant.account_id, role=RobotRole.UNATTENDED)
    server_id, account_id = uuid.uuid4(), uuid.uuid4()
    await add(
        ctx,
        TerminalServer(
            id=server_id,
            account_id=tenant.account_id,
            name=f"ts-{server_id.hex[:8]}",
            hostname="ts.example",
            coordinator_id=coordinator_id,
            max_sessions=max_sessions,
            public_key="k" * 43,
        ),
        UnattendedAccount(
            id=account_id,
            account_id=tenant.account_id,
            terminal_server_id=server_id,
            robot_id=robot.id,
            login=f"bot-{account_id.hex[:6]}",
        ),
    )
    return robot, server_id, account_id, coordinator_id


async def test_an_unattended_robot_with_a_reachable_coordinator_is_dispatching(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    robot, *_ = await unattended_setup(ctx, tenant, coordinator_status=RobotStatus.READY)
    job = await job_on(ctx, client, tenant, robot)
    assert codes(await explain(client, tenant.headers, job)) == ["dispatching"]


async def test_the_coordinator_unreachable(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    robot, server_id, _, coordinator_id = await unattended_setup(
        ctx, tenant, coordinator_status=RobotStatus.DISCONNECTED
    )
    job = await job_on(ctx, client, tenant, robot)
    [reason] = (await explain(client, tenant.headers, job))["reasons"]
    assert reason["code"] == "coordinator_disconnected"
    assert reason["coordinator_id"] == str(coordinator_id)
    assert reason["terminal_server_id"] == str(server_id)
    assert "unreachable (Disconnected)" in reason["message"]

    # A server without any coordinator: no session can be asked for at all.
    lone, lone_server, _, _ = await unattended_setup(ctx, tenant, coordinator_status=None)
    [reason] = (await explain(client, tenant.headers, await job_on(ctx, client, tenant, lone)))["reasons"]
    assert reason["code"] == "no_coordinator" and reason["terminal_server_id"] == str(lone_server)


async def test_the_terminal_servers_session_limit(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    robot, server_id, account_id, _ = await unattended_setup(
        ctx, tenant, coordinator_status=RobotStatus.READY, max_sessions=2
    )
    sessions = [
        TerminalSession(
            id=uuid.uuid4(),
            account_id=tenant.account_id,
            unattended_account_id=account_id,
            terminal_server_id=server_id,
            state=state,
        )
        for state in (SessionState.LOGGED_ON, SessionState.ROBOT_CONNECTED, SessionState.ENDED)
    ]
    await add(ctx, *sessions)
    job = await job_on(ctx, client, tenant, robot)
    [reason] = (await explain(client, tenant.headers, job))["reasons"]
    assert reason["code"] == "session_limit_reached"
    assert (reason["live_sessions"], reason["max_sessions"]) == (2, 2)
    assert "2 of 2 sessions" in reason["message"]
    # A session ends: a seat is free, the job goes.
    await set_row(ctx, TerminalSession, sessions[0].id, state=SessionState.ENDED)
    assert codes(await explain(client, tenant.headers, job)) == ["dispatching"]


# Jobs past Pending ----------------------------------------------------------------------------------


async def test_a_job_that_is_not_pending_answers_its_state(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    robot = await make_robot(ctx, tenant.account_id, **ready())
    job = await job_on(ctx, client, tenant, robot)
    await start_running(ctx, uuid.UUID(job), robot.id)
    data = await explain(client, tenant.headers, job)
    assert data["state"] == "Running" and data["waiting"] is False
    [reason] = data["reasons"]
    assert reason["code"] == "running" and reason["robot_id"] == str(robot.id)
    assert reason["message"].startswith(f"running on robot {robot.name!r} since ")
    assert reason["since"] is not None

    stopped = await client.post(f"{JOBS}/{job}/stop", headers=tenant.headers)
    assert stopped.status_code == 202
    assert codes(await explain(client, tenant.headers, job)) == ["stopping"]

    ended = await job_on(ctx, client, tenant, robot)
    assert (await client.post(f"{JOBS}/{ended}/stop", headers=tenant.headers)).status_code == 200
    data = await explain(client, tenant.headers, ended)
    assert data["state"] == "Stopped" and data["waiting"] is False
    assert codes(data) == ["ended"] and data["reasons"][0]["message"].startswith("ended Stopped at ")


async def test_a_starting_job_waits_for_its_robot(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    from rpa_common import jobflow

    robot = await make_robot(ctx, tenant.account_id, **ready())
    job = await job_on(ctx, client, tenant, robot)

    async def starting(session: Any) -> None:
        assert await jobflow.transition(
            session,
            uuid.UUID(job),
            JobState.STARTING,
            expected=[JobState.PENDING],
            actor=jobflow.Actor.system(),
            values={
                "robot_id": robot.id,
                "attempt": 1,
                "offered_at": utcnow(),
                "lease_expires_at": utcnow() + timedelta(seconds=60),
            },
        )

    await run_in_transaction(ctx.sessions, starting)
    data = await explain(client, tenant.headers, job)
    assert data["state"] == "Starting" and data["waiting"] is True
    assert codes(data) == ["starting"] and "waiting for it to confirm" in data["reasons"][0]["message"]


# Who may ask ----------------------------------------------------------------------------------------


async def test_another_accounts_or_folders_job_is_a_404(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    robot = await make_robot(ctx, tenant.account_id, **ready())
    job = await job_on(ctx, client, tenant, robot)
    resp = await client.get(f"{JOBS}/{job}/explain", headers=other_tenant.headers)
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert (await client.get(f"{JOBS}/{uuid.uuid4()}/explain", headers=tenant.headers)).status_code == 404
    assert (await client.get(f"{JOBS}/{job}/explain")).status_code == 401

    # A role limited to folders sees the jobs of the processes in them only.
    folder, hidden = await make_folder(ctx, tenant.account_id), await make_folder(ctx, tenant.account_id)
    process, _ = await make_process(ctx, tenant.account_id, folder_id=hidden.id)
    unseen = await create(client, tenant.headers, {"process_id": str(process.id), "robot_id": str(robot.id)})
    _, h = await make_folder_user(
        ctx, tenant.account_id, [folder.id], [(PermissionObject.JOBS, PermissionAction.READ)]
    )
    assert (await client.get(f"{JOBS}/{unseen['id']}/explain", headers=h)).status_code == 404
    _, no_read = await make_folder_user(ctx, tenant.account_id, [folder.id], [])
    assert (await client.get(f"{JOBS}/{job}/explain", headers=no_read)).status_code == 403


async def test_robots_in_folders_the_caller_cannot_see_are_not_named(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    mine, hidden = await make_folder(ctx, tenant.account_id), await make_folder(ctx, tenant.account_id)
    process, _ = await make_process(ctx, tenant.account_id, folder_id=mine.id)
    robot = await make_robot(ctx, tenant.account_id, folder_id=hidden.id)
    job = await create(client, tenant.headers, {"process_id": str(process.id), "robot_id": str(robot.id)})
    _, h = await make_folder_user(
        ctx, tenant.account_id, [mine.id], [(PermissionObject.JOBS, PermissionAction.READ)]
    )
    [reason] = (await explain(client, h, job["id"]))["reasons"]
    assert reason["code"] == "robot_disconnected" and reason["robot_id"] == str(robot.id)
    assert reason["robot_name"] == "(in a folder you cannot see)"
    assert robot.name not in reason["message"]
    [admin] = (await explain(client, tenant.headers, job["id"]))["reasons"]
    assert admin["robot_name"] == robot.name
