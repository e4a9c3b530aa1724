"""Screenshots through the API: listed per job, described, served with their type; seen with the
permission to read jobs and only through a job of the caller's folders; another account's are 404.
Retention days per account: read and set by an administrator (audited), bounded, refused to others.
(The whole path from a real robot under Xvfb is in tests/e2e/test_screenshots.py.)"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.blobs import shared_blob_store
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import AuditRecord, Screenshot
from rpa_common.models.base import utcnow
from rpa_common.models.enums import PermissionAction, PermissionObject
from rpa_common.service import ServiceContext
from tests.api.factories import make_folder, make_folder_user, make_process, make_robot
from tests.conftest import Tenant
from tests.images import make_png

API = "/api/v1"


async def _job(
    client: httpx.AsyncClient, tenant: Tenant, folder_id: uuid.UUID | None = None
) -> tuple[str, str]:
    process, _ = await make_process(tenant.ctx, tenant.account_id, folder_id=folder_id)
    robot = await make_robot(tenant.ctx, tenant.account_id, folder_id=folder_id)
    r = await client.post(
        f"{API}/jobs", json={"process_id": str(process.id), "robot_id": str(robot.id)}, headers=tenant.headers
    )
    assert r.status_code == 201, r.text
    return r.json()["id"], str(robot.id)


async def _shot(
    ctx: ServiceContext, tenant: Tenant, job_id: str, robot_id: str, age_s: float, data: bytes
) -> str:
    """What the gateway stores for an upload: the blob, then the row."""
    shot_id = uuid.uuid4()
    key = f"screenshots/{tenant.account_id}/{shot_id}.png"
    await shared_blob_store(ctx.settings).put(key, data, "image/png")

    async def work(session: AsyncSession) -> None:
        session.add(
            Screenshot(
                id=shot_id,
                account_id=tenant.account_id,
                robot_id=uuid.UUID(robot_id),
                job_id=uuid.UUID(job_id),
                content_type="image/png",
                size=len(data),
                width=7,
                height=5,
                blob_key=key,
                at=utcnow() - timedelta(seconds=age_s),
            )
        )

    await run_in_transaction(ctx.sessions, work)
    return str(shot_id)


async def test_job_screenshots_listed_described_and_served(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    job_id, robot_id = await _job(client, tenant)
    png = make_png(7, 5)
    second = await _shot(ctx, tenant, job_id, robot_id, 1, png)
    first = await _shot(ctx, tenant, job_id, robot_id, 10, png)
    h = tenant.headers

    page = (await client.get(f"{API}/jobs/{job_id}/screenshots", headers=h)).json()
    assert [s["id"] for s in page["items"]] == [first, second] and page["total"] == 2
    newest = (await client.get(f"{API}/jobs/{job_id}/screenshots?sort=-at&limit=1", headers=h)).json()
    assert [s["id"] for s in newest["items"]] == [second]
    one = (await client.get(f"{API}/screenshots/{first}", headers=h)).json()
    assert one == page["items"][0]
    assert (one["job_id"], one["robot_id"], one["content_type"], one["size"]) == (
        job_id,
        robot_id,
        "image/png",
        len(png),
    )
    r = await client.get(f"{API}/screenshots/{first}/content", headers=h)
    assert r.status_code == 200 and r.content == png
    assert r.headers["content-type"] == "image/png" and r.headers["x-content-type-options"] == "nosniff"
    octets = await client.get(
        f"{API}/screenshots/{first}/content", headers={**h, "Accept": "application/octet-stream"}
    )
    assert octets.headers["content-type"] == "application/octet-stream" and octets.content == png

    # Another account: 404 for each, like an id that does not exist.
    for path in (f"/screenshots/{first}", f"/screenshots/{first}/content", f"/jobs/{job_id}/screenshots"):
        resp = await client.get(API + path, headers=other_tenant.headers)
        assert resp.status_code == 404 and resp.headers["content-type"] == "application/problem+json", path
    assert (await client.get(f"{API}/screenshots/{uuid.uuid4()}/content", headers=h)).status_code == 404


async def test_screenshots_follow_the_jobs_folder_and_permission(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    mine, theirs = await make_folder(ctx, tenant.account_id), await make_folder(ctx, tenant.account_id)
    seen_job, seen_robot = await _job(client, tenant, mine.id)
    hidden_job, hidden_robot = await _job(client, tenant, theirs.id)
    seen = await _shot(ctx, tenant, seen_job, seen_robot, 1, make_png())
    hidden = await _shot(ctx, tenant, hidden_job, hidden_robot, 1, make_png())
    _, reader = await make_folder_user(
        ctx, tenant.account_id, [mine.id], [(PermissionObject.JOBS, PermissionAction.READ)]
    )

    assert (await client.get(f"{API}/screenshots/{seen}/content", headers=reader)).status_code == 200
    assert (await client.get(f"{API}/jobs/{seen_job}/screenshots", headers=reader)).json()["total"] == 1
    for path in (
        f"/screenshots/{hidden}",
        f"/screenshots/{hidden}/content",
        f"/jobs/{hidden_job}/screenshots",
    ):
        assert (await client.get(API + path, headers=reader)).status_code == 404, path
    # Without the permission to read jobs: 403.
    _, no_jobs = await make_folder_user(
        ctx, tenant.account_id, [mine.id], [(PermissionObject.ROBOTS, PermissionAction.READ)]
    )
    assert (await client.get(f"{API}/screenshots/{seen}", headers=no_jobs)).status_code == 403


async def test_the_image_gone_from_the_store_is_a_clear_404(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    job_id, robot_id = await _job(client, tenant)
    shot = await _shot(ctx, tenant, job_id, robot_id, 1, make_png())
    await shared_blob_store(ctx.settings).delete([f"screenshots/{tenant.account_id}/{shot}.png"])
    r = await client.get(f"{API}/screenshots/{shot}/content", headers=tenant.headers)
    assert r.status_code == 404 and "no longer stored" in r.json()["detail"]


async def test_retention_days_are_set_by_an_administrator(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    account = (await client.get(f"{API}/accounts/current", headers=tenant.headers)).json()
    assert (account["message_retention_days"], account["screenshot_retention_days"]) == (30, 30)

    r = await client.patch(
        f"{API}/accounts/current",
        json={"message_retention_days": 7, "screenshot_retention_days": 3},
        headers=tenant.headers,
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert (body["message_retention_days"], body["screenshot_retention_days"], body["description"]) == (
        7,
        3,
        account["description"],
    )
    async with ctx.sessions() as session:
        audit = (
            (
                await session.execute(
                    sa.select(AuditRecord).where(
                        AuditRecord.account_id == tenant.account_id, AuditRecord.object_type == "account"
                    )
                )
            )
            .scalars()
            .all()
        )
    assert any((a.changes or {}).get("screenshot_retention_days") == 3 for a in audit)

    for bad in (
        {"message_retention_days": 0},
        {"screenshot_retention_days": 3651},
        {"screenshot_retention_days": "x"},
    ):
        r = await client.patch(f"{API}/accounts/current", json=bad, headers=tenant.headers)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == next(iter(bad))
    _, _, developer = await tenant.user("Developer")
    r = await client.patch(f"{API}/accounts/current", json={"message_retention_days": 1}, headers=developer)
    assert r.status_code == 403
    again = (await client.get(f"{API}/accounts/current", headers=tenant.headers)).json()
    assert again["message_retention_days"] == 7
