"""Screenshots end to end, every part a real process: a job's script calls ``sdk.screenshot()`` on
a real robot under a real X display (Xvfb); the robot uploads it to the gateway process; the API
lists it, describes it and serves its image, which decodes to the display's size. A failing job gets
a screenshot on its own. The gateway refuses what is not an image (by its bytes, whatever its name),
what is too large and what is not the robot's; and a screenshot spooled while the gateway was down
arrives once it is back, across a robot restart.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from rpa_common.models import RobotMessage, Screenshot
from rpa_common.models.base import utcnow
from rpa_robot import screenshots as robot_screenshots
from tests.conftest import Tenant
from tests.e2e.conftest import API, Api, Child, Service, Stack, eventually, job_messages
from tests.images import decode_png, make_png
from tests.xvfb import Display, xvfb_display

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MAX_BYTES = 300_000


@pytest.fixture
def xvfb() -> Iterator[Display]:
    """A real X display (Xvfb); skipped loudly without it, failed under CI=true."""
    yield from xvfb_display()


@pytest.fixture
async def services(stack: Stack, api: Api) -> Service:
    """A scheduler and a gateway that share the API's blob directory (the gateway is returned)."""
    shared = {
        "RPA_BLOB_DIR": api.ctx.settings.blob_dir,
        "RPA_SCREENSHOT_MAX_BYTES": str(MAX_BYTES),
        "RPA_RETENTION_INTERVAL_S": "0.5",
    }
    scheduler = stack.service("scheduler", settings=shared)
    gateway = stack.service("gateway", settings=shared)
    await stack.start(scheduler, gateway)
    return gateway


async def connected_robot(
    api: Api, stack: Stack, gateway: Service, name: str | None = None
) -> tuple[str, str, Child]:
    robot_id, key = await api.robot()
    robot = stack.robot(gateway.ws_url, key, name=name)
    await api.wait_robot(robot_id, "Ready", stack=stack)
    return robot_id, key, robot


async def job_screenshots(api: Api, job_id: str, count: int, stack: Stack) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        page = await api.call("GET", f"/jobs/{job_id}/screenshots", 200)
        return page["items"] if page["total"] >= count else None

    try:
        return await eventually(check, 30, f"{count} screenshot(s) of job {job_id}")
    except AssertionError:
        raise AssertionError(stack.report()) from None


async def rows_of(api: Api, job_id: str) -> list[Screenshot]:
    async with api.ctx.sessions() as session:
        rows = await session.execute(sa.select(Screenshot).where(Screenshot.job_id == uuid.UUID(job_id)))
        return list(rows.scalars())


async def test_script_screenshot_is_stored_listed_and_downloaded(
    api: Api,
    stack: Stack,
    services: Service,
    xvfb: Display,
    other_tenant: Tenant,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DISPLAY", xvfb.name)  # the robot's desktop
    robot_id, _, _ = await connected_robot(api, stack, services)
    job_id = await api.job("screenshot", robot=robot_id)
    job = await api.wait_job(job_id, stack=stack)
    assert job["state"] == "Successful", stack.report()
    shot_id, line_id = job["output_args"]["screenshot_id"], job["output_args"]["message_id"]

    [item] = await job_screenshots(api, job_id, 1, stack)
    assert item["id"] == shot_id and item["job_id"] == job_id and item["robot_id"] == robot_id
    assert item["message_id"] == line_id  # attached to the script's log line
    assert item["content_type"] == "image/png"
    assert (item["width"], item["height"]) == (xvfb.width, xvfb.height)
    assert await api.call("GET", f"/screenshots/{shot_id}", 200) == item

    r = await api.client.get(f"{API}/screenshots/{shot_id}/content", headers=api.tenant.headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert len(r.content) == item["size"]
    assert decode_png(r.content) == (xvfb.width, xvfb.height)  # the whole screen, a real image

    # The blob is in the shared directory, under the account; the spool is empty again.
    [row] = await rows_of(api, job_id)
    assert (Path(api.ctx.settings.blob_dir) / row.blob_key).read_bytes() == r.content
    assert row.blob_key.startswith(f"screenshots/{api.tenant.account_id}/")
    spool = stack.dir / "robot-0" / "state" / "screenshots"

    async def spool_empty() -> bool | None:  # the robot empties it once it has the gateway's answer
        return True if not list(spool.glob("*.png")) else None

    await eventually(spool_empty, 15, "the robot's spool emptied")

    # Another account sees none of it: 404, as for an id that does not exist.
    for path in (f"/screenshots/{shot_id}", f"/screenshots/{shot_id}/content", f"/jobs/{job_id}/screenshots"):
        resp = await api.client.get(API + path, headers=other_tenant.headers)
        assert resp.status_code == 404, (path, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
    assert (
        await api.client.get(f"{API}/screenshots/{uuid.uuid4()}", headers=api.tenant.headers)
    ).status_code == 404


async def test_failing_job_gets_an_automatic_screenshot(
    api: Api, stack: Stack, services: Service, xvfb: Display, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPLAY", xvfb.name)
    robot_id, _, _ = await connected_robot(api, stack, services)
    job_id = await api.job("fail", robot=robot_id)
    job = await api.wait_job(job_id, stack=stack)
    assert job["state"] == "Failed" and "on purpose" in job["error"]

    [item] = await job_screenshots(api, job_id, 1, stack)
    assert (item["width"], item["height"]) == (xvfb.width, xvfb.height)
    # A log line says so, and the screenshot is attached to it.
    lines = {str(m.id): m for m in await job_messages(api.ctx, job_id)}
    line = lines[item["message_id"]]
    assert line.message == "screenshot of the desktop when the job failed"
    assert line.fields == {"screenshot_id": item["id"]}
    r = await api.client.get(f"{API}/screenshots/{item['id']}/content", headers=api.tenant.headers)
    assert decode_png(r.content) == (xvfb.width, xvfb.height)


def _upload(
    gateway: Service, key: str | None, job_id: str, name: str, data: bytes, **fields: str
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(
        f"{gateway.http_url}/robot/v1/screenshots",
        data={"job_id": job_id, **fields},
        files={"file": (name, data, "image/png")},
        headers=headers,
        timeout=30,
    )


def _blobs(api: Api) -> set[str]:
    root = Path(api.ctx.settings.blob_dir) / "screenshots" / str(api.tenant.account_id)
    return {str(p) for p in root.rglob("*")} if root.exists() else set()


async def test_gateway_refuses_what_is_not_a_png_or_jpeg_too_large_or_not_the_robots(
    api: Api, stack: Stack, services: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RPA_ROBOT_SCREENSHOT_ON_FAILURE", "false")
    robot_id, key, _ = await connected_robot(api, stack, services)
    job_id = await api.job("hello", robot=robot_id, input_args={"count": 1})
    assert (await api.wait_job(job_id, stack=stack))["state"] == "Successful"
    before = _blobs(api)

    # A PNG name and type, other content: 415, nothing stored.
    for fake in (b"GIF89a not a png at all", b"%PDF-1.7\n", b"\x89PNG but broken", b""):
        r = _upload(services, key, job_id, "screen.png", fake)
        assert r.status_code == 415, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["errors"][0]["field"] == "file"
    # Larger than the limit: 413, nothing stored.
    r = _upload(services, key, job_id, "big.png", make_png() + b"\0" * (MAX_BYTES + 1))
    assert r.status_code == 413, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert await rows_of(api, job_id) == [] and _blobs(api) == before

    # Another robot's key for this job: 404; no key: 401; a bad job id: 422 naming it.
    _, other_key = await api.robot()
    assert _upload(services, other_key, job_id, "a.png", make_png()).status_code == 404
    assert _upload(services, None, job_id, "a.png", make_png()).status_code == 401
    bad = _upload(services, key, "nope", "a.png", make_png())
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "job_id"
    assert await rows_of(api, job_id) == []

    # A JPEG named .png is stored as what it is; a retried upload (same id) is stored once.
    jpeg = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffc0001108002a003803012200021101031101ffd9")
    shot_id = str(uuid.uuid4())
    first = _upload(services, key, job_id, "looks.png", jpeg, id=shot_id)
    assert first.status_code == 201, first.text
    assert first.json()["content_type"] == "image/jpeg"
    assert (first.json()["width"], first.json()["height"]) == (56, 42)
    again = _upload(services, key, job_id, "looks.png", jpeg, id=shot_id)
    assert again.status_code == 200 and again.json() == first.json()
    assert [str(r.id) for r in await rows_of(api, job_id)] == [shot_id]
    r = await api.client.get(f"{API}/screenshots/{shot_id}/content", headers=api.tenant.headers)
    assert r.headers["content-type"] == "image/jpeg" and r.content == jpeg


async def test_screenshot_spooled_while_the_gateway_is_down_arrives_later(
    api: Api, stack: Stack, services: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RPA_ROBOT_SCREENSHOT_ON_FAILURE", "false")
    robot_id, key, robot = await connected_robot(api, stack, services, name="robot-spool")
    job_id = await api.job("hello", robot=robot_id, input_args={"count": 1})
    assert (await api.wait_job(job_id, stack=stack))["state"] == "Successful"
    robot.stop()
    services.stop()
    # What sdk.screenshot() leaves when the upload could not happen: the spool on the robot's disk.
    spool = stack.dir / "robot-spool" / "state" / "screenshots"
    png = make_png(64, 48)
    shot_id = robot_screenshots.spool(spool, png, job_id=job_id)
    again = stack.robot(services.ws_url, key, name="robot-spool")  # same home: same spool
    await eventually(lambda: _later(again), 10, "robot up")
    assert await rows_of(api, job_id) == []
    await stack.restart(services)

    async def stored() -> list[Screenshot] | None:
        rows = await rows_of(api, job_id)
        return rows or None

    [row] = await eventually(stored, 40, "the spooled screenshot uploaded")
    assert str(row.id) == shot_id and (row.width, row.height) == (64, 48)
    r = await api.client.get(f"{API}/screenshots/{shot_id}/content", headers=api.tenant.headers)
    assert r.content == png

    async def spool_empty() -> bool | None:  # emptied once the robot has the gateway's answer
        return True if not list(spool.glob("*.json")) else None

    await eventually(spool_empty, 15, f"the robot's spool emptied: {os.listdir(spool)}")


async def test_scheduler_removes_old_screenshots_with_their_images_and_old_messages(
    api: Api, stack: Stack, services: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real scheduler process's retention: rows older than the account's days go, images too."""
    monkeypatch.setenv("RPA_ROBOT_SCREENSHOT_ON_FAILURE", "false")
    r = await api.client.patch(
        f"{API}/accounts/current",
        json={"screenshot_retention_days": 2, "message_retention_days": 3},
        headers=api.tenant.headers,
    )
    assert r.status_code == 200, r.text
    robot_id, key, _ = await connected_robot(api, stack, services)
    job_id = await api.job("hello", robot=robot_id, input_args={"count": 2})
    assert (await api.wait_job(job_id, stack=stack))["state"] == "Successful"
    old, new = (_upload(services, key, job_id, f"{n}.png", make_png(3 + n, 2)).json()["id"] for n in (1, 2))
    lines = await job_messages(api.ctx, job_id)
    assert len(lines) >= 2
    # Age one screenshot past the account's 2 days and one log line past its 3 days.
    async with api.ctx.sessions() as session, session.begin():
        await session.execute(
            sa.update(Screenshot)
            .where(Screenshot.id == uuid.UUID(old))
            .values(at=utcnow() - timedelta(days=2, hours=1))
        )
        await session.execute(
            sa.update(RobotMessage)
            .where(RobotMessage.id == lines[0].id)
            .values(at=utcnow() - timedelta(days=4))
        )
    old_blob = Path(api.ctx.settings.blob_dir) / "screenshots" / str(api.tenant.account_id) / f"{old}.png"
    assert old_blob.exists()

    async def removed() -> bool | None:
        ids = {str(row.id) for row in await rows_of(api, job_id)}
        messages = {m.id for m in await job_messages(api.ctx, job_id)}
        return True if old not in ids and lines[0].id not in messages and not old_blob.exists() else None

    await eventually(removed, 30, "retention by the scheduler process")
    assert [str(row.id) for row in await rows_of(api, job_id)] == [new]
    assert {m.id for m in await job_messages(api.ctx, job_id)} == {m.id for m in lines[1:]}
    assert (await api.client.get(f"{API}/screenshots/{old}", headers=api.tenant.headers)).status_code == 404
    r = await api.client.get(f"{API}/screenshots/{new}/content", headers=api.tenant.headers)
    assert r.status_code == 200 and decode_png(r.content) == (5, 2)


async def _later(child: Child) -> bool | None:
    return True if child.running() else None
