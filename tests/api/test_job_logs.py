"""A job's log lines, as a person following the job reads them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import RobotMessage
from rpa_common.models.enums import LogLevel
from tests.api.factories import make_process, make_robot
from tests.conftest import Tenant


async def _job_with_logs(tenant: Tenant, levels: list[LogLevel]) -> tuple[str, list[uuid.UUID]]:
    process, _ = await make_process(tenant.ctx, tenant.account_id)
    robot = await make_robot(tenant.ctx, tenant.account_id)
    robot_id = robot[0].id if isinstance(robot, tuple) else robot.id
    r = await tenant.client.post(
        "/api/v1/jobs",
        json={"process_id": str(process.id), "robot_id": str(robot_id)},
        headers=tenant.headers,
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    start = datetime.now(UTC)
    ids = [uuid.uuid4() for _ in levels]

    async def work(session):  # type: ignore[no-untyped-def]
        # As the gateway stores them: robot-made ids, the robot's own timestamps (given out of order).
        for n in reversed(range(len(levels))):
            session.add(
                RobotMessage(
                    id=ids[n],
                    account_id=tenant.account_id,
                    robot_id=robot_id,
                    process_id=process.id,
                    job_id=uuid.UUID(job_id),
                    level=levels[n],
                    message=f"line {n}",
                    fields={"n": n},
                    at=start + timedelta(milliseconds=n),
                )
            )

    await run_in_transaction(tenant.ctx.sessions, work)
    return job_id, ids


async def test_job_logs_in_order_paged_and_filtered(tenant: Tenant) -> None:
    levels = [LogLevel.DEBUG, LogLevel.INFO, LogLevel.WARNING, LogLevel.ERROR, LogLevel.INFO]
    job_id, ids = await _job_with_logs(tenant, levels)

    r = await tenant.client.get(f"/api/v1/jobs/{job_id}/logs", headers=tenant.headers)
    assert r.status_code == 200, r.text
    page = r.json()
    assert "total" not in page and page["next_cursor"] is None
    assert [item["id"] for item in page["items"]] == [str(i) for i in ids]
    assert [item["level"] for item in page["items"]] == ["Debug", "Info", "Warning", "Error", "Info"]
    assert page["items"][2]["message"] == "line 2" and page["items"][2]["fields"] == {"n": 2}

    r = await tenant.client.get(
        f"/api/v1/jobs/{job_id}/logs?min_level=warning&limit=1", headers=tenant.headers
    )
    assert [i["message"] for i in r.json()["items"]] == ["line 2"]
    cursor = r.json()["next_cursor"]
    r = await tenant.client.get(
        f"/api/v1/jobs/{job_id}/logs?min_level=warning&limit=1&cursor={cursor}", headers=tenant.headers
    )
    assert [i["message"] for i in r.json()["items"]] == ["line 3"] and r.json()["next_cursor"] is None

    r = await tenant.client.get(f"/api/v1/jobs/{job_id}/logs?level=loud", headers=tenant.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "level"


async def test_job_logs_are_scoped_and_need_permission(tenant: Tenant, other_tenant: Tenant) -> None:
    job_id, _ = await _job_with_logs(tenant, [LogLevel.INFO])
    r = await other_tenant.client.get(f"/api/v1/jobs/{job_id}/logs", headers=other_tenant.headers)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    _, _, viewer = await tenant.user("Viewer")
    assert (await tenant.client.get(f"/api/v1/jobs/{job_id}/logs", headers=viewer)).status_code == 200
    # A role that may read jobs but not logs.
    role = await tenant.client.post(
        "/api/v1/roles",
        json={
            "name": f"jobs-only-{uuid.uuid4().hex[:6]}",
            "permissions": [{"object": "jobs", "action": "read"}],
        },
        headers=tenant.headers,
    )
    assert role.status_code == 201, role.text
    user = await tenant.client.post(
        "/api/v1/users",
        json={
            "username": f"u-{uuid.uuid4().hex[:8]}",
            "password": "long enough pw",
            "role_ids": [role.json()["id"]],
        },
        headers=tenant.headers,
    )
    assert user.status_code == 201, user.text
    token = await tenant.client.post(
        "/api/v1/auth/token", data={"username": user.json()["username"], "password": "long enough pw"}
    )
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    assert (await tenant.client.get(f"/api/v1/jobs/{job_id}", headers=headers)).status_code == 200
    assert (await tenant.client.get(f"/api/v1/jobs/{job_id}/logs", headers=headers)).status_code == 403
