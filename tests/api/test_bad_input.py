"""Bad input gets a clear 4xx, never a 500, and never writes anything.

Every answer checked here must be an RFC 9457 ``application/problem+json`` document with ``status``
(equal to the HTTP status), ``title`` and ``detail``, naming the offending field in
``errors[].field`` where there is one; and the job, job_event and audit_record rows of the account
must be exactly as before the call.

The first part drives the jobs endpoints field by field. The second sweeps every JSON endpoint the
app has (whoever wrote it) with the input no endpoint may choke on: malformed JSON, a body of the
wrong type, an oversized body, no / a forged / an expired token.

Decision (for every request schema of the API): request bodies reject unknown fields with a 422
naming them, by ``model_config = ConfigDict(extra="forbid")``.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from rpa_common.models import AuditRecord, Job, JobEvent, Process, Robot
from rpa_common.security import issue_access_token
from rpa_common.service import ServiceContext
from rpa_common.settings import Settings
from tests.api.factories import make_group, make_process, make_robot
from tests.conftest import Tenant

JOBS = "/api/v1/jobs"


# Checks ------------------------------------------------------------------------------------------


async def snapshot(ctx: ServiceContext, account_id: uuid.UUID) -> dict[str, int]:
    """Rows the account has in the tables a job write touches."""
    counts = {}
    async with ctx.sessions() as session:
        for model in (Job, JobEvent, AuditRecord):
            counts[model.__tablename__] = int(
                await session.scalar(
                    sa.select(sa.func.count()).select_from(model).where(model.account_id == account_id)
                )
                or 0
            )
    return counts


def assert_problem(resp: httpx.Response, status: int, *fields: str) -> dict[str, Any]:
    """``resp`` is a problem document with ``status``, naming each of ``fields``."""
    assert resp.status_code == status, (
        f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text}"
    )
    assert resp.headers["content-type"].split(";")[0] == "application/problem+json", resp.headers
    body: dict[str, Any] = resp.json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    if fields:
        named = {str(e["field"]) for e in body.get("errors", [])}
        for field in fields:
            # Repeatable and nested values are named with their path ("state.0", "input_args.x").
            assert any(n == field or n.startswith(field + ".") for n in named), (field, body)
    return body


@dataclass
class World:
    """A tenant with a process, an active robot and a group; another tenant with the same."""

    tenant: Tenant
    other: Tenant
    process: Process
    robot: Robot
    group_id: uuid.UUID
    their_process: Process
    their_version_id: uuid.UUID
    their_robot: Robot
    their_group_id: uuid.UUID
    their_job_id: str

    def body(self, **extra: Any) -> dict[str, Any]:
        return {"process_id": str(self.process.id), "robot_id": str(self.robot.id), **extra}


@pytest.fixture
async def world(
    ctx: ServiceContext, client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> World:
    process, _ = await make_process(ctx, tenant.account_id)
    robot = await make_robot(ctx, tenant.account_id)
    group = await make_group(ctx, tenant.account_id, [robot])
    their_process, their_versions = await make_process(ctx, other_tenant.account_id)
    their_robot = await make_robot(ctx, other_tenant.account_id)
    their_group = await make_group(ctx, other_tenant.account_id, [their_robot])
    resp = await client.post(
        JOBS,
        json={"process_id": str(their_process.id), "robot_id": str(their_robot.id)},
        headers=other_tenant.headers,
    )
    assert resp.status_code == 201, resp.text
    return World(
        tenant,
        other_tenant,
        process,
        robot,
        group.id,
        their_process,
        their_versions[0].id,
        their_robot,
        their_group.id,
        resp.json()["id"],
    )


@pytest.fixture
async def unchanged(ctx: ServiceContext, world: World) -> AsyncIterator[None]:
    """The test's calls must write nothing in either account."""
    mine = await snapshot(ctx, world.tenant.account_id)
    theirs = await snapshot(ctx, world.other.account_id)
    yield
    assert await snapshot(ctx, world.tenant.account_id) == mine
    assert await snapshot(ctx, world.other.account_id) == theirs


# The jobs endpoints, field by field ------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"process_id": ',
        b"{'process_id': 1}",
        b'{"process_id": "x",}',
        b"\xff\xfe not utf-8",
        b"[" * 50_000,  # deeper than the JSON reader's recursion limit
        b"nul\x00l",
    ],
    ids=["truncated", "single-quotes", "trailing-comma", "not-utf8", "too-deep", "nul"],
)
async def test_malformed_json_is_400(
    client: httpx.AsyncClient, world: World, unchanged: None, raw: bytes
) -> None:
    resp = await client.post(
        JOBS, content=raw, headers={**world.tenant.headers, "Content-Type": "application/json"}
    )
    problem = assert_problem(resp, 400)
    # The body is named, never a character position as if it were a field.
    assert all(e["field"] == "body" for e in problem.get("errors", [])), problem


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"process_id": 123}, "process_id"),
        ({"process_id": "not-a-uuid"}, "process_id"),
        ({"robot_id": ["x"]}, "robot_id"),
        ({"priority": "high"}, "priority"),
        ({"priority": 2.5}, "priority"),
        ({"priority": 10**30}, "priority"),
        ({"priority": None}, "priority"),
        ({"input_args": "a=1"}, "input_args"),
        ({"input_args": [1, 2]}, "input_args"),
        ({"stop_after_s": "soon"}, "stop_after_s"),
        ({"stop_after_s": -5}, "stop_after_s"),
        ({"stop_after_s": 10**20}, "stop_after_s"),
        ({"interrupt_after_s": 0}, "interrupt_after_s"),
        ({"max_retries": 11}, "max_retries"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": {"n": 1}}, "max_retries"),
        ({"process_version_id": 7}, "process_version_id"),
    ],
)
async def test_wrong_types_and_ranges_are_422_naming_the_field(
    client: httpx.AsyncClient, world: World, unchanged: None, patch: dict[str, Any], field: str
) -> None:
    resp = await client.post(JOBS, json=world.body(**patch), headers=world.tenant.headers)
    assert_problem(resp, 422, field)


async def test_rules_across_fields_are_422_naming_them(
    client: httpx.AsyncClient, world: World, unchanged: None
) -> None:
    h = world.tenant.headers
    assert_problem(
        await client.post(JOBS, json={"process_id": str(world.process.id)}, headers=h),
        422,
        "robot_id",
        "robot_group_id",
    )
    assert_problem(
        await client.post(JOBS, json=world.body(robot_group_id=str(world.group_id)), headers=h),
        422,
        "robot_id",
        "robot_group_id",
    )
    assert_problem(
        await client.post(JOBS, json=world.body(stop_after_s=10, interrupt_after_s=5), headers=h),
        422,
        "interrupt_after_s",
    )
    # Python's JSON reader takes NaN and Infinity; no database JSON column does.
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        raw = json.dumps(world.body()).encode()[:-1] + b', "input_args": {"x": ' + literal + b"}}"
        resp = await client.post(JOBS, content=raw, headers={**h, "Content-Type": "application/json"})
        assert_problem(resp, 422, "input_args")


@pytest.mark.parametrize(
    "extra", [{"priorty": 3}, {"state": "Running"}, {"source": "trigger"}, {"created_by": str(uuid.uuid4())}]
)
async def test_unknown_fields_are_422_naming_them(
    client: httpx.AsyncClient, world: World, unchanged: None, extra: dict[str, Any]
) -> None:
    resp = await client.post(JOBS, json=world.body(**extra), headers=world.tenant.headers)
    assert_problem(resp, 422, next(iter(extra)))


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "process_id"), ({"robot_id": "x"}, "process_id"), (None, "body"), ([], "body"), ("job", "body")],
    ids=["empty", "no-process", "null", "array", "string"],
)
async def test_missing_fields_and_non_objects_are_422(
    client: httpx.AsyncClient, world: World, unchanged: None, body: Any, field: str
) -> None:
    if isinstance(body, dict) and "robot_id" in body:
        body = {"robot_id": str(world.robot.id)}
    resp = await client.post(
        JOBS,
        content=json.dumps(body).encode(),
        headers={**world.tenant.headers, "Content-Type": "application/json"},
    )
    problem = assert_problem(resp, 422)
    assert problem["errors"], problem
    if field != "body":
        assert field in {e["field"] for e in problem["errors"]}


async def test_oversized_bodies_are_413(
    client: httpx.AsyncClient, settings: Settings, world: World, unchanged: None
) -> None:
    big = world.body(input_args={"blob": "x" * (settings.max_json_bytes + 1)})
    raw = json.dumps(big).encode()
    h = {**world.tenant.headers, "Content-Type": "application/json"}
    # Declared length over the limit: refused before reading.
    assert_problem(await client.post(JOBS, content=raw, headers=h), 413)

    # No declared length (chunked): refused while reading.
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 64 * 1024):
            yield raw[i : i + 64 * 1024]

    assert_problem(await client.post(JOBS, content=chunks(), headers=h), 413)


@pytest.mark.parametrize(
    ("content_type", "content"),
    [
        ("text/plain", b'{"process_id": "x"}'),
        ("application/x-www-form-urlencoded", b"process_id=x&robot_id=y"),
        (
            "multipart/form-data; boundary=b",
            b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--b--\r\n",
        ),
        ("application/xml", b"<job/>"),
        (None, b'{"process_id": "x"}'),
    ],
    ids=["text", "form", "multipart", "xml", "none"],
)
async def test_wrong_content_type_is_415(
    client: httpx.AsyncClient, world: World, unchanged: None, content_type: str | None, content: bytes
) -> None:
    headers = dict(world.tenant.headers)
    if content_type:
        headers["Content-Type"] = content_type
    resp = await client.post(JOBS, content=content, headers=headers)
    assert_problem(resp, 415)


async def test_ids_of_another_account_are_404_naming_the_field(
    client: httpx.AsyncClient, world: World, unchanged: None
) -> None:
    h = world.tenant.headers
    for body, field in (
        ({"process_id": str(world.their_process.id), "robot_id": str(world.robot.id)}, "process_id"),
        (world.body(robot_id=str(world.their_robot.id)), "robot_id"),
        (
            {"process_id": str(world.process.id), "robot_group_id": str(world.their_group_id)},
            "robot_group_id",
        ),
        (world.body(process_version_id=str(world.their_version_id)), "process_version_id"),
    ):
        assert_problem(await client.post(JOBS, json=body, headers=h), 404, field)
    for method, path in (
        ("GET", f"{JOBS}/{world.their_job_id}"),
        ("POST", f"{JOBS}/{world.their_job_id}/stop"),
        ("POST", f"{JOBS}/{world.their_job_id}/interrupt"),
    ):
        assert_problem(await client.request(method, path, headers=h), 404)


async def test_bad_ids_query_and_headers_are_4xx(
    client: httpx.AsyncClient, world: World, unchanged: None
) -> None:
    h = world.tenant.headers
    # A path whose id is not a UUID names no object: 404, as an unknown id (docs/api-guide.md).
    for method, path in (
        ("GET", f"{JOBS}/nope"),
        ("POST", f"{JOBS}/nope/stop"),
        ("POST", f"{JOBS}/1/interrupt"),
    ):
        assert_problem(await client.request(method, path, headers=h), 404)
    for params, field in (
        ({"limit": 0}, "limit"),
        ({"limit": "all"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"sort": "password"}, "sort"),
        ({"state": "Done"}, "state"),
        ({"source": "gui"}, "source"),
        ({"robot_id": "r1"}, "robot_id"),
        ({"created_to": "2024-13-45"}, "created_to"),
    ):
        assert_problem(await client.get(JOBS, params=params, headers=h), 422, field)
    for key in ("", "k" * 256):
        resp = await client.post(JOBS, json=world.body(), headers={**h, "Idempotency-Key": key})
        problem = assert_problem(resp, 422)
        assert {e["field"].lower() for e in problem["errors"]} == {"idempotency-key"}


def forged_tokens(settings: Settings, tenant: Tenant) -> dict[str, str]:
    """Tokens that must all be refused, for the tenant's admin."""
    expired = issue_access_token(
        settings.model_copy(update={"access_token_ttl_s": -60}),
        user_id=tenant.admin_id,
        account_id=tenant.account_id,
        token_version=0,
    )
    other_secret = jwt.encode(
        jwt.decode(tenant.token, options={"verify_signature": False}),
        "not-the-server-secret-but-long-enough-for-hs256",
        algorithm="HS256",
    )
    claims = jwt.decode(tenant.token, options={"verify_signature": False})
    unsigned = (
        base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
        + "."
        + base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        + "."
    )
    header, _, signature = tenant.token.split(".")
    tampered_claims = {**claims, "acc": str(uuid.uuid4())}
    tampered = ".".join(
        [
            header,
            base64.urlsafe_b64encode(json.dumps(tampered_claims).encode()).rstrip(b"=").decode(),
            signature,
        ]
    )
    return {
        "expired": expired,
        "other-secret": other_secret,
        "alg-none": unsigned,
        "tampered": tampered,
        "garbage": "not.a.token",
        "api-key-like": "rpak_000000000000_nope",
    }


async def test_expired_and_forged_tokens_are_401(
    client: httpx.AsyncClient, settings: Settings, world: World, unchanged: None
) -> None:
    calls = [
        ("GET", JOBS, None),
        ("POST", JOBS, world.body()),
        ("GET", f"{JOBS}/{world.their_job_id}", None),
        ("POST", f"{JOBS}/{world.their_job_id}/stop", None),
        ("POST", f"{JOBS}/{world.their_job_id}/interrupt", None),
    ]
    for name, token in forged_tokens(settings, world.tenant).items():
        for method, path, body in calls:
            resp = await client.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})
            assert resp.status_code == 401, (name, method, path, resp.text)
            assert_problem(resp, 401)
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic YWRtaW46YWRtaW4="}):
        assert_problem(await client.post(JOBS, json=world.body(), headers=headers), 401)


# Every JSON endpoint of the app ------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    """With every path parameter filled with a fresh uuid (an id that exists nowhere)."""
    needs_token: bool
    body_type: str | None
    """The media type of the request body, None when the endpoint takes none."""


def endpoints(app: FastAPI) -> list[Endpoint]:
    """Every /api/v1 endpoint, read from the OpenAPI document (whoever wrote it)."""
    out = []
    for template, operations in app.openapi()["paths"].items():
        if not template.startswith("/api/v1"):
            continue
        path = re.sub(r"\{[^}]+\}", lambda _: str(uuid.uuid4()), template)
        for method, op in operations.items():
            content = (op.get("requestBody") or {}).get("content") or {}
            out.append(Endpoint(method.upper(), path, bool(op.get("security")), next(iter(content), None)))
    return out


async def call_with_a_body(client: httpx.AsyncClient, e: Endpoint, headers: dict[str, str]) -> httpx.Response:
    """Call ``e`` with a (meaningless) body of the media type it takes, so only the token is wrong."""
    if e.body_type == "application/json":
        return await client.request(e.method, e.path, json={}, headers=headers)
    if e.body_type == "multipart/form-data":
        files = {"package": ("p.zip", b"PK\x05\x06" + b"\x00" * 18, "application/zip")}
        return await client.request(e.method, e.path, files=files, headers=headers)
    if e.body_type == "application/x-www-form-urlencoded":
        return await client.request(e.method, e.path, data={"x": "1"}, headers=headers)
    return await client.request(e.method, e.path, headers=headers)


async def test_every_endpoint_refuses_missing_forged_and_expired_tokens(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings, world: World, unchanged: None
) -> None:
    guarded = [e for e in endpoints(app) if e.needs_token]
    assert {(e.method, e.path) for e in guarded} >= {("POST", JOBS), ("GET", JOBS)}
    tokens = forged_tokens(settings, world.tenant)
    for e in guarded:
        for name, token in (
            ("none", None),
            ("expired", tokens["expired"]),
            ("forged", tokens["other-secret"]),
        ):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            resp = await call_with_a_body(client, e, headers)
            assert resp.status_code == 401, (name, e, resp.status_code, resp.text)
            assert_problem(resp, 401)


async def test_every_json_endpoint_refuses_malformed_mistyped_and_oversized_bodies(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings, world: World, unchanged: None
) -> None:
    # Endpoints that take a form or an upload have their own limits and media types.
    writes = [
        e
        for e in endpoints(app)
        if e.method in ("POST", "PUT", "PATCH") and e.body_type in (None, "application/json")
    ]
    assert ("POST", JOBS, "application/json") in {(e.method, e.path, e.body_type) for e in writes}
    h = world.tenant.headers
    oversized = b'{"x": "' + b"x" * (settings.max_json_bytes + 1) + b'"}'
    for e in writes:
        if e.body_type is not None:
            resp = await client.request(
                e.method, e.path, content=b'{"name": ', headers={**h, "Content-Type": "application/json"}
            )
            assert_problem(resp, 400)
        resp = await client.request(
            e.method, e.path, content=b"name=x", headers={**h, "Content-Type": "text/plain"}
        )
        assert_problem(resp, 415)
        resp = await client.request(
            e.method, e.path, content=oversized, headers={**h, "Content-Type": "application/json"}
        )
        assert_problem(resp, 413)
