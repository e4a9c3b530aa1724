"""Text no database can store (a NUL character, invalid UTF-8) is a 422 naming the field, never a 500.

Before this guard, ``username=%00abc`` on ``POST /auth/token`` reached PostgreSQL and came back as a
500 text/plain. Each case here is sent to the real app on both databases and must answer a problem
document naming the field, and write nothing.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import sqlalchemy as sa

from rpa_common.models import AuditRecord, Robot
from rpa_common.service import ServiceContext
from tests.api.factories import make_process, make_robot
from tests.api.helpers import make_package
from tests.conftest import Tenant

PROBLEM = "application/problem+json"


def assert_refused(resp: httpx.Response, field: str) -> dict[str, Any]:
    assert resp.status_code == 422, (
        f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text}"
    )
    assert resp.headers["content-type"].split(";")[0] == PROBLEM
    body: dict[str, Any] = resp.json()
    assert body["status"] == 422
    assert [e["field"] for e in body["errors"]] == [field], body
    return body


async def rows(ctx: ServiceContext, account_id: uuid.UUID) -> tuple[int, int]:
    async with ctx.sessions() as session:
        robots = await session.scalar(sa.select(sa.func.count()).where(Robot.account_id == account_id))
        audits = await session.scalar(sa.select(sa.func.count()).where(AuditRecord.account_id == account_id))
    return int(robots or 0), int(audits or 0)


async def test_nul_in_a_login_form_field(client: httpx.AsyncClient, tenant: Tenant) -> None:
    resp = await client.post(
        "/api/v1/auth/token",
        content=b"username=%00abc&password=x",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_refused(resp, "username")
    bad_utf8 = await client.post(
        "/api/v1/auth/token",
        content=b"username=admin&password=%ff%fe",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_refused(bad_utf8, "password")


async def test_nul_and_bad_utf8_in_json(client: httpx.AsyncClient, tenant: Tenant) -> None:
    before = await rows(tenant.ctx, tenant.account_id)
    json_headers = {**tenant.headers, "content-type": "application/json"}
    cases = [
        (b'{"name": "a\\u0000b"}', "name"),  # an escaped NUL
        (b'{"name": "ok", "description": "\\ud800"}', "description"),  # a lone surrogate
        (b'{"name": "caf\xe9"}', "name"),  # Latin-1, not UTF-8
        (b'{"name": "ok", "a\\u0000": 1}', "a\\x00"),  # a key
    ]
    for body, field in cases:
        assert_refused(await client.post("/api/v1/robots", content=body, headers=json_headers), field)
    # Valid escapes and real non-ASCII text still go through.
    ok = await client.post(
        "/api/v1/robots", content='{"name": "Zoë \\u00e9\\n"}'.encode(), headers=json_headers
    )
    assert ok.status_code == 201, ok.text
    assert ok.json()["name"] == "Zoë é"
    assert await rows(tenant.ctx, tenant.account_id) == (before[0] + 1, before[1] + 1)


async def test_nul_deep_in_job_input(client: httpx.AsyncClient, tenant: Tenant) -> None:
    process, _ = await make_process(tenant.ctx, tenant.account_id)
    robot = await make_robot(tenant.ctx, tenant.account_id)
    resp = await client.post(
        "/api/v1/jobs",
        json={
            "process_id": str(process.id),
            "robot_id": str(robot.id),
            "input_args": {"rows": [{"cell": "x"}, {"cell": "y\x00"}]},
        },
        headers=tenant.headers,
    )
    assert_refused(resp, "input_args.rows.1.cell")


async def test_nul_and_bad_utf8_in_query_params(client: httpx.AsyncClient, tenant: Tenant) -> None:
    assert_refused(await client.get("/api/v1/robots?name=%00", headers=tenant.headers), "name")
    assert_refused(await client.get("/api/v1/robots?name=%C3%28", headers=tenant.headers), "name")
    assert_refused(await client.get("/api/v1/jobs?sort=-%00", headers=tenant.headers), "sort")
    fine = await client.get("/api/v1/robots", params={"name": "é"}, headers=tenant.headers)
    assert fine.status_code == 200, fine.text


async def test_nul_in_a_path_param_is_not_a_500(client: httpx.AsyncClient, tenant: Tenant) -> None:
    for path in ("/api/v1/robots/%00", "/api/v1/robots/%ff%fe", "/api/v1/jobs/%00/logs"):
        resp = await client.get(path, headers=tenant.headers)
        assert resp.status_code in (404, 422), f"{path}: {resp.status_code} {resp.text}"
        assert resp.headers["content-type"].split(";")[0] == PROBLEM


async def test_nul_in_a_multipart_field(client: httpx.AsyncClient, tenant: Tenant) -> None:
    package = make_package(f"nul-{uuid.uuid4().hex[:8]}", "1.0.0")
    resp = await client.post(
        "/api/v1/processes/publish",
        files={"package": ("p.zip", package, "application/zip")},
        data={"notes": "release\x00notes"},
        headers=tenant.headers,
    )
    assert_refused(resp, "notes")
