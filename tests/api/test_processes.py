"""Remote publishing and process versions: what is stored is what was sent (sha256, size, bytes back),
the current version moves as asked, deletes keep job history, and every bad package is a clear 4xx
problem that leaves nothing behind."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import uuid
import zipfile
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from rpa_api.app import create_app
from rpa_common.models import AuditRecord, Job, Process, ProcessPackageChunk, ProcessVersion
from rpa_common.models.enums import JobState
from rpa_common.packages import CHUNK_SIZE, read_package
from rpa_common.service import ServiceContext
from tests.api.helpers import make_package
from tests.conftest import Tenant, make_settings

PROCESSES = "/api/v1/processes"
PUBLISH = f"{PROCESSES}/publish"


async def publish(
    client: httpx.AsyncClient, headers: dict[str, str], data: bytes, url: str = PUBLISH, **form: Any
) -> httpx.Response:
    return await client.post(
        url,
        files={"package": ("package.zip", data, "application/zip")},
        data={k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in form.items()},
        headers=headers,
    )


async def published(client: httpx.AsyncClient, tenant: Tenant, data: bytes, **form: Any) -> dict[str, Any]:
    r = await publish(client, tenant.headers, data, **form)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def row_counts(ctx: ServiceContext, account_id: uuid.UUID) -> tuple[int, int, int]:
    async with ctx.sessions() as s:
        processes = await s.scalar(
            sa.select(sa.func.count()).select_from(Process).where(Process.account_id == account_id)
        )
        versions = await s.scalar(
            sa.select(sa.func.count())
            .select_from(ProcessVersion)
            .where(ProcessVersion.account_id == account_id)
        )
        chunks = await s.scalar(
            sa.select(sa.func.count())
            .select_from(ProcessPackageChunk)
            .join(ProcessVersion, ProcessVersion.id == ProcessPackageChunk.version_id)
            .where(ProcessVersion.account_id == account_id)
        )
    return int(processes or 0), int(versions or 0), int(chunks or 0)


async def add_job(ctx: ServiceContext, tenant: Tenant, process_id: str, version_id: str) -> uuid.UUID:
    job_id = uuid.uuid4()
    async with ctx.sessions() as s:
        s.add(
            Job(
                id=job_id,
                account_id=tenant.account_id,
                process_id=uuid.UUID(process_id),
                process_version_id=uuid.UUID(version_id),
                state=JobState.SUCCESSFUL,
            )
        )
        await s.commit()
    return job_id


async def test_publish_stores_exact_bytes_and_download_gives_them_back(
    client: httpx.AsyncClient, ctx: ServiceContext, tenant: Tenant
) -> None:
    # Incompressible content over 2 MiB: the package spans three chunks.
    blob = os.urandom(2 * CHUNK_SIZE + 1234)
    data = make_package(
        "Invoice Bot",
        "1.0.0",
        files={"main.py": "print('hi')\n", "lib/util.py": "X = 1\n", "assets/blob.bin": blob},
        description="Books invoices",
        min_runtime_version="1.2",
        default_input={"folder": "inbox", "limit": 10},
    )
    body = await published(client, tenant, data, notes="first release")
    process, version = body["process"], body["version"]
    assert body["process_created"] is True
    assert (process["name"], process["description"], process["current_version"]) == (
        "Invoice Bot",
        "Books invoices",
        "1.0.0",
    )
    assert process["current_version_id"] == version["id"] and process["min_runtime_version"] == "1.2"
    assert version["sha256"] == hashlib.sha256(data).hexdigest() and version["size"] == len(data)
    assert (version["version"], version["entry_point"], version["notes"]) == (
        "1.0.0",
        "main.py",
        "first release",
    )
    assert version["default_input"] == {"folder": "inbox", "limit": 10}
    assert version["is_current"] is True and version["published_by"] == str(tenant.admin_id)

    url = f"{PROCESSES}/{process['id']}/versions/{version['id']}/package"
    r = await client.get(url, headers=tenant.headers)
    assert r.status_code == 200
    assert r.content == data
    assert zipfile.ZipFile(io.BytesIO(r.content)).read("assets/blob.bin") == blob
    assert r.headers["content-type"] == "application/zip"
    assert r.headers["x-checksum-sha256"] == version["sha256"]
    assert r.headers["etag"] == f'"{version["sha256"]}"'
    assert "attachment" in r.headers["content-disposition"] and ".zip" in r.headers["content-disposition"]
    r = await client.get(url, headers={**tenant.headers, "If-None-Match": f'"{version["sha256"]}"'})
    assert r.status_code == 304 and r.content == b""

    assert await row_counts(ctx, tenant.account_id) == (1, 1, 3)
    async with ctx.sessions() as s:
        again = b"".join([c async for c in read_package(s, uuid.UUID(version["id"]))])
        audit = (
            await s.execute(
                sa.select(AuditRecord).where(
                    AuditRecord.account_id == tenant.account_id, AuditRecord.action == "publish"
                )
            )
        ).scalar_one()
    assert again == data
    assert audit.object_id == version["id"] and audit.changes and audit.changes["sha256"] == version["sha256"]

    got = await client.get(f"{PROCESSES}/{process['id']}", headers=tenant.headers)
    assert got.json()["current_version"] == "1.0.0"


async def test_versions_current_and_listing(client: httpx.AsyncClient, tenant: Tenant) -> None:
    first = await published(client, tenant, make_package("etl", "1.0.0"))
    pid = first["process"]["id"]
    second = await published(client, tenant, make_package("etl", "1.1.0"), notes="fix")
    assert second["process_created"] is False and second["process"]["id"] == pid
    assert second["process"]["current_version"] == "1.1.0" and second["version"]["is_current"] is True

    third = await published(client, tenant, make_package("etl", "1.2.0-rc.1"), make_current=False)
    assert third["version"]["is_current"] is False and third["process"]["current_version"] == "1.1.0"

    # The same through the process's own endpoint.
    r = await publish(client, tenant.headers, make_package("etl", "2.0.0"), url=f"{PROCESSES}/{pid}/versions")
    assert r.status_code == 201, r.text
    assert r.json()["is_current"] is True and r.json()["process_id"] == pid
    r = await publish(
        client, tenant.headers, make_package("other", "3.0.0"), url=f"{PROCESSES}/{pid}/versions"
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "manifest.name"

    r = await client.post(
        f"{PROCESSES}/{pid}/versions/{first['version']['id']}/make-current", headers=tenant.headers
    )
    assert r.status_code == 200 and r.json()["is_current"] is True
    assert (await client.get(f"{PROCESSES}/{pid}", headers=tenant.headers)).json()[
        "current_version"
    ] == "1.0.0"

    page = (
        await client.get(
            f"{PROCESSES}/{pid}/versions", params={"sort": "version", "limit": 2}, headers=tenant.headers
        )
    ).json()
    assert page["total"] == 4 and [v["version"] for v in page["items"]] == ["1.0.0", "1.1.0"]
    assert [v["is_current"] for v in page["items"]] == [True, False]
    one = await client.get(f"{PROCESSES}/{pid}/versions/{third['version']['id']}", headers=tenant.headers)
    assert one.json()["version"] == "1.2.0-rc.1"

    listing = (await client.get(PROCESSES, params={"name": "ET"}, headers=tenant.headers)).json()
    assert [p["name"] for p in listing["items"]] == ["etl"] and listing["items"][0][
        "current_version"
    ] == "1.0.0"
    assert (await client.get(PROCESSES, params={"name": "zzz"}, headers=tenant.headers)).json()["total"] == 0

    r = await client.patch(f"{PROCESSES}/{pid}", json={"description": "nightly"}, headers=tenant.headers)
    assert r.status_code == 200 and r.json()["description"] == "nightly"
    r = await client.patch(f"{PROCESSES}/{pid}", json={"name": "renamed"}, headers=tenant.headers)
    assert r.status_code == 422


async def test_delete_rules(client: httpx.AsyncClient, ctx: ServiceContext, tenant: Tenant) -> None:
    v1 = await published(client, tenant, make_package("payroll", "1"))
    v2 = await published(client, tenant, make_package("payroll", "2"))
    v3 = await published(client, tenant, make_package("payroll", "3"), make_current=False)
    pid = v1["process"]["id"]

    def vurl(v: dict[str, Any]) -> str:
        return f"{PROCESSES}/{pid}/versions/{v['version']['id']}"

    r = await client.delete(vurl(v2), headers=tenant.headers)  # the current one
    assert r.status_code == 409 and "current" in r.json()["detail"]
    await add_job(ctx, tenant, pid, v1["version"]["id"])
    r = await client.delete(vurl(v1), headers=tenant.headers)  # used by a job
    assert r.status_code == 409 and "job" in r.json()["detail"]
    assert (await client.delete(vurl(v3), headers=tenant.headers)).status_code == 204
    assert (await client.get(vurl(v3), headers=tenant.headers)).status_code == 404
    assert await row_counts(ctx, tenant.account_id) == (1, 2, 2)

    r = await client.delete(f"{PROCESSES}/{pid}", headers=tenant.headers)
    assert r.status_code == 409
    other = await published(client, tenant, make_package("scratch", "0.1"))
    r = await client.delete(f"{PROCESSES}/{other['process']['id']}", headers=tenant.headers)
    assert r.status_code == 204
    assert (
        await client.get(f"{PROCESSES}/{other['process']['id']}", headers=tenant.headers)
    ).status_code == 404
    assert await row_counts(ctx, tenant.account_id) == (1, 2, 2)


def _zip(entries: dict[str, bytes | str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in entries.items():
            zf.writestr(name, content)
    return buf.getvalue()


def _manifest_zip(manifest: str, **files: str) -> bytes:
    return _zip({"rpa.json": manifest, "main.py": "print(1)\n", **files})


BAD_PACKAGES: list[tuple[str, bytes, str, str]] = [
    ("not a zip", b"this is not a zip file at all", "package", "zip"),
    ("truncated zip", make_package("p", "1")[:-30], "package", "zip"),
    (
        "parent entry",
        make_package("p", "1", files={"main.py": "x", "../evil.py": "x"}),
        "package",
        "../evil.py",
    ),
    (
        "absolute entry",
        make_package("p", "1", files={"main.py": "x", "/etc/evil.py": "x"}),
        "package",
        "/etc/evil.py",
    ),
    (
        "drive letter",
        make_package("p", "1", files={"main.py": "x", "C:/evil.py": "x"}),
        "package",
        "C:/evil.py",
    ),
    (
        "backslash",
        make_package("p", "1", files={"main.py": "x", "lib\\evil.py": "x"}),
        "package",
        "backslash",
    ),
    ("no manifest", make_package("p", "1", with_manifest=False), "manifest", "rpa.json"),
    ("nested manifest", _zip({"sub/rpa.json": '{"name":"p"}', "main.py": "x"}), "manifest", "rpa.json"),
    ("manifest not json", _manifest_zip("{name: p"), "manifest", "JSON"),
    ("manifest not object", _manifest_zip("[1, 2]"), "manifest", "object"),
    (
        "no entry_point",
        make_package("p", "1", manifest={"name": "p", "version": "1"}),
        "manifest.entry_point",
        "entry_point",
    ),
    (
        "entry point missing",
        make_package("p", "1", entry_point="run.py", files={"main.py": "x"}),
        "manifest.entry_point",
        "run.py",
    ),
    ("entry point not .py", make_package("p", "1", entry_point="run.sh"), "manifest.entry_point", ".py"),
    (
        "entry point escapes",
        make_package("p", "1", entry_point="../main.py", files={"main.py": "x"}),
        "manifest.entry_point",
        "..",
    ),
    ("name not a string", make_package("p", "1", manifest_extra={"name": 5}), "manifest.name", "string"),
    (
        "no name",
        make_package("p", "1", manifest={"version": "1", "entry_point": "main.py"}),
        "manifest.name",
        "name",
    ),
    (
        "version a number",
        make_package("p", "1", manifest_extra={"version": 1.5}),
        "manifest.version",
        "string",
    ),
    ("version with spaces", make_package("p", "1 0"), "manifest.version", "label"),
    (
        "default_input a list",
        make_package("p", "1", manifest_extra={"default_input": [1]}),
        "manifest.default_input",
        "object",
    ),
    (
        "description a number",
        make_package("p", "1", manifest_extra={"description": 3}),
        "manifest.description",
        "string",
    ),
    (
        "runtime a bool",
        make_package("p", "1", manifest_extra={"min_runtime_version": True}),
        "manifest.min_runtime_version",
        "string",
    ),
    ("empty file", b"", "package", "empty"),
]


@pytest.mark.parametrize(("case", "data", "field", "says"), BAD_PACKAGES, ids=[c[0] for c in BAD_PACKAGES])
async def test_bad_packages_are_422_and_leave_nothing(
    client: httpx.AsyncClient,
    ctx: ServiceContext,
    tenant: Tenant,
    case: str,
    data: bytes,
    field: str,
    says: str,
) -> None:
    r = await publish(client, tenant.headers, data)
    assert r.status_code == 422, (case, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["errors"][0]["field"] == field, problem
    assert says in problem["detail"], problem
    assert await row_counts(ctx, tenant.account_id) == (0, 0, 0)


async def test_too_many_entries(client: httpx.AsyncClient, ctx: ServiceContext, tenant: Tenant) -> None:
    files: dict[str, bytes | str] = {f"f{i}.py": b"" for i in range(10_001)}
    files["main.py"] = "x"
    r = await publish(client, tenant.headers, make_package("many", "1", files=files))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "package"
    assert "entries" in r.json()["detail"]
    assert await row_counts(ctx, tenant.account_id) == (0, 0, 0)


async def test_duplicate_version_is_409(
    client: httpx.AsyncClient, ctx: ServiceContext, tenant: Tenant
) -> None:
    await published(client, tenant, make_package("dup", "1.0.0"))
    r = await publish(client, tenant.headers, make_package("dup", "1.0.0", files={"main.py": "other"}))
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "manifest.version"
    assert await row_counts(ctx, tenant.account_id) == (1, 1, 1)


async def test_not_multipart_is_415(client: httpx.AsyncClient, ctx: ServiceContext, tenant: Tenant) -> None:
    r = await client.post(PUBLISH, json={"package": "x"}, headers=tenant.headers)
    assert r.status_code == 415, r.text
    r = await client.post(PUBLISH, data={"notes": "x"}, headers=tenant.headers)  # a urlencoded form
    assert r.status_code == 415, r.text
    r = await client.post(
        PUBLISH,
        content=make_package("raw", "1"),
        headers={**tenant.headers, "Content-Type": "application/zip"},
    )
    assert r.status_code == 415, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    r = await client.post(PUBLISH, files={"other": ("a.zip", b"x")}, headers=tenant.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "package"
    assert await row_counts(ctx, tenant.account_id) == (0, 0, 0)


@pytest.fixture
async def small_client(ctx: ServiceContext, settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An API whose package limit is 64 KiB."""
    small = dataclasses.replace(ctx, settings=make_settings(settings.db_url, max_package_bytes=64 * 1024))
    transport = httpx.ASGITransport(app=create_app(ctx=small))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
        yield c


async def test_oversized_and_zip_bombs(
    small_client: httpx.AsyncClient, ctx: ServiceContext, tenant: Tenant
) -> None:
    limit = 64 * 1024
    # Just over the limit (within the multipart allowance the middleware gives): the file check says 413.
    over = make_package("big", "1", files={"main.py": "x", "blob.bin": os.urandom(limit + 100)})
    r = await publish(small_client, tenant.headers, over)
    assert r.status_code == 413, r.text
    assert r.json()["errors"][0]["field"] == "package"
    # Far over: cut by the body limit before it is read.
    far = make_package("big", "1", files={"main.py": "x", "blob.bin": os.urandom(4 * limit)})
    assert (await publish(small_client, tenant.headers, far)).status_code == 413
    # Small on the wire, huge once unpacked.
    bomb = make_package("bomb", "1", files={"main.py": "x", "zeros.bin": b"\0" * (10 * limit + 1)})
    assert len(bomb) < limit
    r = await publish(small_client, tenant.headers, bomb)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "package"
    assert "expands" in r.json()["detail"]
    # Under every limit: fine.
    ok = make_package("fine", "1", files={"main.py": "x", "blob.bin": os.urandom(limit // 2)})
    assert (await publish(small_client, tenant.headers, ok)).status_code == 201
    assert await row_counts(ctx, tenant.account_id) == (1, 1, 1)


async def test_another_accounts_process_is_404(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = await published(client, other_tenant, make_package("secret-bot", "1"))
    pid, vid = theirs["process"]["id"], theirs["version"]["id"]
    for method, url in (
        ("GET", f"{PROCESSES}/{pid}"),
        ("PATCH", f"{PROCESSES}/{pid}"),
        ("DELETE", f"{PROCESSES}/{pid}"),
        ("GET", f"{PROCESSES}/{pid}/versions"),
        ("GET", f"{PROCESSES}/{pid}/versions/{vid}"),
        ("GET", f"{PROCESSES}/{pid}/versions/{vid}/package"),
        ("POST", f"{PROCESSES}/{pid}/versions/{vid}/make-current"),
        ("DELETE", f"{PROCESSES}/{pid}/versions/{vid}"),
    ):
        r = await client.request(method, url, json={} if method == "PATCH" else None, headers=tenant.headers)
        assert r.status_code == 404, (method, url, r.text)
    r = await publish(
        client, tenant.headers, make_package("secret-bot", "2"), url=f"{PROCESSES}/{pid}/versions"
    )
    assert r.status_code == 404
    # The same name in my account is my own, separate process.
    mine = await published(client, tenant, make_package("secret-bot", "1"))
    assert mine["process_created"] is True and mine["process"]["id"] != pid
    assert (await client.get(PROCESSES, headers=tenant.headers)).json()["total"] == 1


async def test_viewer_cannot_publish_developer_can(client: httpx.AsyncClient, tenant: Tenant) -> None:
    _, _, viewer = await tenant.user("Viewer")
    _, _, developer = await tenant.user("Developer")
    r = await publish(client, viewer, make_package("ci-bot", "1"))
    assert r.status_code == 403
    r = await publish(client, developer, make_package("ci-bot", "1"))
    assert r.status_code == 201, r.text
    pid = r.json()["process"]["id"]
    assert (await client.get(f"{PROCESSES}/{pid}", headers=viewer)).status_code == 200
    r = await publish(client, viewer, make_package("ci-bot", "2"), url=f"{PROCESSES}/{pid}/versions")
    assert r.status_code == 403


async def test_folder_restricted_publisher(
    client: httpx.AsyncClient, ctx: ServiceContext, tenant: Tenant
) -> None:
    from tests.api.test_robots import folder_user

    folder_id, headers = await folder_user(ctx, tenant, ("processes", "read"), ("processes", "create"))
    other_folder, _ = await folder_user(ctx, tenant, ("processes", "read"))
    hidden = await published(client, tenant, make_package("hidden-bot", "1"), folder_id=other_folder)
    r = await publish(client, headers, make_package("filed-bot", "1"), folder_id=folder_id)
    assert r.status_code == 201, r.text
    assert r.json()["process"]["folder_id"] == folder_id
    r = await publish(client, headers, make_package("elsewhere-bot", "1"), folder_id=other_folder)
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "folder_id"
    # A process in no folder is visible to every role (issue 12), so the caller may publish one.
    r = await publish(client, headers, make_package("loose-bot", "1"))
    assert r.status_code == 201, r.text
    # A version of a process in a folder the caller cannot use is refused, and nothing is written.
    r = await publish(client, headers, make_package("hidden-bot", "2"))
    assert r.status_code == 403
    listing = (await client.get(PROCESSES, headers=headers)).json()
    assert sorted(p["name"] for p in listing["items"]) == ["filed-bot", "loose-bot"]
    assert (await client.get(f"{PROCESSES}/{hidden['process']['id']}", headers=headers)).status_code == 404
    assert await row_counts(ctx, tenant.account_id) == (3, 3, 3)
