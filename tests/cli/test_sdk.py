"""The SDK without a server: its operation table follows the API's OpenAPI document, it retries 429/503
after their ``Retry-After`` (bounded), raises ``ApiError`` carrying the problem document, walks every
page of a list, and builds packages as docs/package-format.md says. The remote server is faked with
``httpx.MockTransport`` (what a client sees of it); the OpenAPI document is the real app's."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from rpa_sdk import Client
from rpa_sdk.errors import ApiError
from rpa_sdk.operations import OPERATIONS
from rpa_sdk.packaging import PackageError, build_package
from tests.conftest import ROOT


def test_the_operation_table_is_the_openapi_document_regenerated() -> None:
    from rpa_api.app import create_app

    doc = create_app().openapi()
    api = {
        op["operationId"]: (method.upper(), path)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    }
    assert api == OPERATIONS, "run: .venv/bin/python scripts/sdk_operations.py --write"
    generated = subprocess.run(
        [sys.executable, str(Path(ROOT) / "scripts" / "sdk_operations.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert generated == (Path(ROOT) / "sdk" / "rpa_sdk" / "operations.py").read_text()


def test_the_sdk_imports_no_server_code() -> None:
    code = (
        "import sys, rpa_sdk.cli, rpa_sdk.client;"
        "bad=[m for m in sys.modules if m.split('.')[0] in ('rpa_common','rpa_api','rpa_robot','rpa_scheduler')];"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _client(handler: Any, **kw: Any) -> tuple[Client, list[float]]:
    slept: list[float] = []
    client = Client(
        "http://rpa.test", "tok", transport=httpx.MockTransport(handler), sleep=slept.append, **kw
    )
    return client, slept


def test_429_and_503_are_retried_after_their_retry_after() -> None:
    answers = iter(
        [
            httpx.Response(
                429,
                headers={"Retry-After": "3"},
                json={"title": "Too Many Requests", "status": 429, "detail": "slow down"},
            ),
            httpx.Response(
                503,
                headers={"Retry-After": "1"},
                json={"title": "Service Unavailable", "status": 503, "detail": "db"},
            ),
            httpx.Response(200, json={"id": "r1", "name": "bot"}),
        ]
    )
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(answers)

    client, slept = _client(handler)
    assert client.robots.get("r1") == {"id": "r1", "name": "bot"}
    assert slept == [3.0, 1.0]
    assert len(seen) == 3 and all(r.headers["Authorization"] == "Bearer tok" for r in seen)


def test_retries_are_bounded_and_end_in_the_problem() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(
            429,
            headers={"Retry-After": "2"},
            json={"title": "Too Many Requests", "status": 429, "detail": "rate limit of the key"},
        )

    client, slept = _client(handler, max_retries=2)
    with pytest.raises(ApiError) as caught:
        client.jobs.list().__next__()
    assert calls == 3 and slept == [2.0, 2.0]
    assert caught.value.status == 429 and caught.value.detail == "rate limit of the key"

    # A Retry-After longer than the client will wait is not waited: the error at once.
    client, slept = _client(
        lambda r: httpx.Response(503, headers={"Retry-After": "3600"}, json={}), max_retry_wait=60
    )
    with pytest.raises(ApiError) as caught:
        client.me()
    assert slept == [] and caught.value.status == 503


def test_an_error_answer_is_an_api_error_with_the_problem_and_its_field() -> None:
    problem = {
        "type": "about:blank",
        "title": "Unprocessable Content",
        "status": 422,
        "detail": "robot_id: not a robot of this account",
        "errors": [{"field": "robot_id", "message": "unknown robot"}],
    }
    client, _ = _client(
        lambda r: httpx.Response(422, json=problem, headers={"Content-Type": "application/problem+json"})
    )
    with pytest.raises(ApiError) as caught:
        client.jobs.start("p", robot_id="r")
    exc = caught.value
    assert (exc.status, exc.title, exc.field) == (422, "Unprocessable Content", "robot_id")
    assert exc.problem == problem and "not a robot of this account" in str(exc)


def test_iterate_walks_every_offset_page_and_every_cursor_page() -> None:
    people = [{"id": str(n), "name": f"r{n}"} for n in range(7)]
    asked: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        q = dict(request.url.params)
        asked.append(q)
        if request.url.path == "/api/v1/robots":
            limit, offset = int(q["limit"]), int(q["offset"])
            return httpx.Response(
                200,
                json={"items": people[offset : offset + limit], "total": 7, "limit": limit, "offset": offset},
            )
        # logs: cursor pages, next_cursor null on the last page
        cursor = int(q.get("cursor", "0"))
        items = [{"id": f"l{n}", "message": str(n)} for n in range(cursor, min(cursor + 2, 5))]
        nxt = str(cursor + 2) if cursor + 2 < 5 else None
        return httpx.Response(200, json={"items": items, "next_cursor": nxt, "limit": 2})

    client, _ = _client(handler)
    assert [r["name"] for r in client.robots.list(name="r")] == [f"r{n}" for n in range(7)]
    assert [q["offset"] for q in asked] == ["0"]  # 7 items fit one page of 200
    asked.clear()
    assert [r["id"] for r in client.iterate("robots_list", page_size=3)] == [str(n) for n in range(7)]
    assert [q["offset"] for q in asked] == ["0", "3", "6"]
    assert [line["message"] for line in client.iterate("jobs_logs", page_size=2, job_id="j")] == [
        "0",
        "1",
        "2",
        "3",
        "4",
    ]


def test_publish_uploads_the_package_as_multipart_with_progress(tmp_path: Path) -> None:
    received: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.read()
        received["type"] = request.headers["Content-Type"]
        received["body"] = body
        return httpx.Response(
            201, json={"process": {"name": "hello"}, "version": {"version": "1.0.0"}, "process_created": True}
        )

    client, _ = _client(handler)
    _, package = build_package(Path(ROOT) / "examples" / "hello")
    progress: list[tuple[int, int]] = []
    result = client.processes.publish(
        package, notes="ci 42", progress=lambda s, t: progress.append((s, t)), chunk_size=1024
    )
    assert result["process_created"] is True
    assert received["type"].startswith("multipart/form-data; boundary=")
    assert package in received["body"] and b'name="notes"\r\n\r\nci 42' in received["body"]
    assert progress[-1][0] == progress[-1][1] == len(received["body"])
    assert len(progress) > 1


def test_build_package_puts_the_manifest_at_the_root_and_leaves_caches_out(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "rpa.json").write_text(
        json.dumps({"name": "Bot", "version": "1.0", "entry_point": "main.py"})
    )
    (tmp_path / "main.py").write_text("print(1)\n")
    (tmp_path / "lib" / "util.py").write_text("X = 1\n")
    (tmp_path / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    manifest, data = build_package(tmp_path)
    assert manifest["name"] == "Bot"
    assert sorted(zipfile.ZipFile(io.BytesIO(data)).namelist()) == ["lib/util.py", "main.py", "rpa.json"]

    (tmp_path / "rpa.json").write_text(
        json.dumps({"name": "Bot", "version": "1.0", "entry_point": "gone.py"})
    )
    with pytest.raises(PackageError, match=r"gone\.py"):
        build_package(tmp_path)
    with pytest.raises(PackageError, match=r"no rpa\.json"):
        build_package(tmp_path / "lib")
