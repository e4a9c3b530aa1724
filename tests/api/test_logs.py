"""``GET /logs`` and ``GET /jobs/{id}/logs``: every filter, stable cursor pages, 422 naming the field."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import RobotMessage
from rpa_common.models.enums import LogLevel
from tests.api.factories import make_process, make_robot
from tests.conftest import Tenant

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


async def _lines(tenant: Tenant, rows: list[dict[str, Any]]) -> list[uuid.UUID]:
    """Lines as the gateway stores them: robot-made ids, the robot's times (given out of order)."""
    ids = [uuid.uuid4() for _ in rows]

    async def work(session):  # type: ignore[no-untyped-def]
        for n in reversed(range(len(rows))):
            values = {
                "level": LogLevel.INFO,
                "message": f"line {n}",
                "at": T0 + timedelta(seconds=n),
                **rows[n],
            }
            session.add(RobotMessage(id=ids[n], account_id=tenant.account_id, **values))

    await run_in_transaction(tenant.ctx.sessions, work)
    return ids


async def _get(tenant: Tenant, query: str, headers: dict[str, str] | None = None) -> Any:
    r = await tenant.client.get(f"/api/v1/logs?{query}", headers=headers or tenant.headers)
    assert r.status_code == 200, r.text
    assert "total" not in r.json()
    return r.json()


def _messages(page: dict[str, Any]) -> list[str]:
    return [item["message"] for item in page["items"]]


async def test_each_filter(tenant: Tenant) -> None:
    p1, (v1a, v1b) = await make_process(tenant.ctx, tenant.account_id, versions=2)
    p2, (v2,) = await make_process(tenant.ctx, tenant.account_id)
    r1 = await make_robot(tenant.ctx, tenant.account_id)
    r2 = await make_robot(tenant.ctx, tenant.account_id)
    job1, job2, task = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    common1 = {"robot_id": r1.id, "process_id": p1.id, "job_id": job1}
    rows = [
        {**common1, "process_version_id": v1a.id, "level": LogLevel.DEBUG, "message": "start 100% done_x"},
        {**common1, "process_version_id": v1a.id, "level": LogLevel.WARNING, "task_id": task},
        {**common1, "process_version_id": v1b.id, "level": LogLevel.ERROR, "fields": {"k": 1}},
        {
            "robot_id": r2.id,
            "process_id": p2.id,
            "process_version_id": v2.id,
            "job_id": job2,
            "level": LogLevel.CRITICAL,
            "message": "Invoice FAILED",
        },
        {"robot_id": r2.id, "level": LogLevel.INFO, "message": "idle robot line"},
    ]
    await _lines(tenant, rows)
    asc = "order=asc"
    assert _messages(await _get(tenant, f"{asc}&job_id={job1}")) == ["start 100% done_x", "line 1", "line 2"]
    assert _messages(await _get(tenant, f"{asc}&robot_id={r2.id}")) == ["Invoice FAILED", "idle robot line"]
    assert _messages(await _get(tenant, f"{asc}&process_id={p1.id}")) == [
        "start 100% done_x",
        "line 1",
        "line 2",
    ]
    assert _messages(await _get(tenant, f"{asc}&process_version_id={v1b.id}")) == ["line 2"]
    assert _messages(await _get(tenant, f"{asc}&task_id={task}")) == ["line 1"]
    assert _messages(await _get(tenant, f"{asc}&min_level=error")) == ["line 2", "Invoice FAILED"]
    assert _messages(await _get(tenant, f"{asc}&level=Debug&level=critical")) == [
        "start 100% done_x",
        "Invoice FAILED",
    ]
    assert _messages(await _get(tenant, f"{asc}&level=Warning&level=Error&min_level=Error")) == ["line 2"]
    frm, to = (T0 + timedelta(seconds=1)).isoformat(), (T0 + timedelta(seconds=3)).isoformat()
    got = await _get(tenant, f"{asc}&from={frm.replace('+00:00', 'Z')}&to={to.replace('+00:00', 'Z')}")
    assert _messages(got) == ["line 1", "line 2", "Invoice FAILED"]
    assert _messages(await _get(tenant, f"{asc}&text=invoice")) == ["Invoice FAILED"]  # any case
    assert _messages(await _get(tenant, f"{asc}&text=100%25%20done_")) == ["start 100% done_x"]
    assert _messages(await _get(tenant, f"{asc}&text=0_d")) == []  # _ and % are not wildcards
    assert _messages(await _get(tenant, f"{asc}&robot_id={r1.id}&min_level=Warning&text=line")) == [
        "line 1",
        "line 2",
    ]
    # Newest first by default; a line as the API shows it.
    page = await _get(tenant, f"robot_id={r1.id}")
    assert _messages(page) == ["line 2", "line 1", "start 100% done_x"]
    line = page["items"][0]
    assert line["level"] == "Error" and line["fields"] == {"k": 1} and line["job_id"] == str(job1)
    assert line["process_version_id"] == str(v1b.id) and line["robot_id"] == str(r1.id)
    # The job's own endpoint takes the same filters.
    r = await tenant.client.get(f"/api/v1/logs?job_id={uuid.uuid4()}", headers=tenant.headers)
    assert r.json()["items"] == []


async def test_cursor_pages_are_stable_while_lines_arrive(tenant: Tenant) -> None:
    robot = await make_robot(tenant.ctx, tenant.account_id)
    # Ten lines in the same microsecond: the id breaks the tie.
    same = [{"robot_id": robot.id, "at": T0} for _ in range(10)]
    ids = await _lines(
        tenant, same + [{"robot_id": robot.id, "at": T0 + timedelta(seconds=s)} for s in (1, 2)]
    )
    # The tie is broken by id in the database's own order of ids (MariaDB's UUID type has its own).
    whole = await _get(tenant, f"order=asc&robot_id={robot.id}&limit=1000")
    expected = [uuid.UUID(item["id"]) for item in whole["items"]]
    assert sorted(expected[:10]) == sorted(ids[:10]) and expected[10:] == ids[10:]
    seen: list[str] = []
    cursor = None
    for n in range(5):
        query = f"order=asc&robot_id={robot.id}&limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = await _get(tenant, query)
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if n == 1:
            # Lines that arrive meanwhile: one before the cursor (not shown), one after (shown).
            await _lines(tenant, [{"robot_id": robot.id, "at": T0 - timedelta(days=1), "message": "old"}])
            late = await _lines(
                tenant, [{"robot_id": robot.id, "at": T0 + timedelta(seconds=5), "message": "new"}]
            )
            expected.append(late[0])
        if cursor is None:
            break
    assert seen == [str(i) for i in expected]
    assert len(set(seen)) == len(seen)
    # The same walk newest first.
    back: list[str] = []
    cursor = None
    while True:
        page = await _get(tenant, f"robot_id={robot.id}&limit=4" + (f"&cursor={cursor}" if cursor else ""))
        back += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert back[: len(expected)] == [str(i) for i in reversed(expected)]


async def test_bad_filter_values_are_422_naming_the_field(tenant: Tenant) -> None:
    robot = await make_robot(tenant.ctx, tenant.account_id)
    await _lines(tenant, [{"robot_id": robot.id}, {"robot_id": robot.id}])
    page = await _get(tenant, f"order=asc&robot_id={robot.id}&limit=1")
    cases = {
        "level=Loud": "level",
        "min_level=verbose": "min_level",
        "from=yesterday": "from",
        "to=12345": "to",
        "from=2026-05-02T00:00:00Z&to=2026-05-01T00:00:00Z": "from",
        "from=9999-12-31T23:00:00-05:00": "from",
        "cursor=not-a-cursor": "cursor",
        f"order=desc&cursor={page['next_cursor']}": "cursor",  # a cursor of the other order
        "limit=0": "limit",
        "limit=1001": "limit",
        "order=sideways": "order",
        "job_id=12": "job_id",
        "robot_id=x": "robot_id",
        f"text={'x' * 201}": "text",
    }
    for query, field in cases.items():
        r = await tenant.client.get(f"/api/v1/logs?{query}", headers=tenant.headers)
        assert r.status_code == 422, (query, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert field in [e["field"] for e in r.json()["errors"]], (query, r.json())
    r = await tenant.client.get(f"/api/v1/jobs/{uuid.uuid4()}/logs?min_level=x", headers=tenant.headers)
    assert r.status_code in (404, 422)


async def test_lines_are_scoped_to_account_folders_and_permission(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    folder = await tenant.client.post(
        "/api/v1/folders", json={"name": f"f-{uuid.uuid4().hex[:6]}"}, headers=tenant.headers
    )
    assert folder.status_code == 201, folder.text
    folder_id = folder.json()["id"]
    inside, _ = await make_process(tenant.ctx, tenant.account_id, folder_id=uuid.UUID(folder_id))
    # A process of another folder (one in no folder would be visible to every role).
    other = await tenant.client.post(
        "/api/v1/folders", json={"name": f"g-{uuid.uuid4().hex[:6]}"}, headers=tenant.headers
    )
    outside, _ = await make_process(tenant.ctx, tenant.account_id, folder_id=uuid.UUID(other.json()["id"]))
    robot = await make_robot(tenant.ctx, tenant.account_id)
    await _lines(
        tenant,
        [
            {"robot_id": robot.id, "process_id": inside.id, "message": "in folder"},
            {"robot_id": robot.id, "process_id": outside.id, "message": "elsewhere"},
        ],
    )
    assert _messages(await _get(tenant, f"order=asc&robot_id={robot.id}")) == ["in folder", "elsewhere"]
    assert _messages(await _get(other_tenant, f"robot_id={robot.id}", other_tenant.headers)) == []
    scoped = await tenant.folder_user(
        f"logs-{uuid.uuid4().hex[:6]}", [{"object": "logs", "action": "read"}], folder_id
    )
    assert _messages(await _get(tenant, f"robot_id={robot.id}", scoped)) == ["in folder"]
    no_logs = await tenant.folder_user(
        f"jobs-{uuid.uuid4().hex[:6]}", [{"object": "jobs", "action": "read"}], folder_id
    )
    assert (await tenant.client.get("/api/v1/logs", headers=no_logs)).status_code == 403
