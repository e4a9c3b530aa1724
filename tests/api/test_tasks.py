"""Tasks through the API: add one, many and from CSV; limits; filters; history; the state changes a
person may make (and those refused); retry; delete; bad input changes nothing."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from rpa_common.models import AuditRecord, Task
from rpa_common.models.base import utcnow
from rpa_common.models.enums import TaskState
from rpa_common.service import ServiceContext
from tests.api.test_queues import QUEUES, add_robot, create_queue, robot_finishes, robot_takes
from tests.conftest import Tenant, make_settings

S = TaskState


def tasks_url(queue: dict[str, Any]) -> str:
    return f"{QUEUES}/{queue['id']}/tasks"


async def add(
    client: httpx.AsyncClient, tenant: Tenant, queue: dict[str, Any], **body: Any
) -> dict[str, Any]:
    body.setdefault("name", f"task-{uuid.uuid4().hex[:6]}")
    r = await client.post(tasks_url(queue), json=body, headers=tenant.headers)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


async def count(tenant: Tenant, queue: dict[str, Any]) -> int:
    async with tenant.ctx.sessions() as session:
        return int(
            await session.scalar(sa.select(sa.func.count()).where(Task.queue_id == uuid.UUID(queue["id"])))
            or 0
        )


async def upload(
    client: httpx.AsyncClient, tenant: Tenant, queue: dict[str, Any], text: str | bytes
) -> httpx.Response:
    data = text.encode() if isinstance(text, str) else text
    return await client.post(
        f"{tasks_url(queue)}/csv", files={"file": ("tasks.csv", data, "text/csv")}, headers=tenant.headers
    )


async def test_add_one_and_many(client: httpx.AsyncClient, tenant: Tenant) -> None:
    queue = await create_queue(client, tenant)
    deadline = (utcnow() + timedelta(days=1)).isoformat()
    one = await add(
        client,
        tenant,
        queue,
        name="inv-1",
        description="first",
        parameters={"amount": 12.5, "customer": {"id": 7}},
        priority=3,
        tags=["eu", "urgent"],
        deadline=deadline,
    )
    assert one["state"] == "Created" and one["priority"] == 3 and one["tags"] == ["eu", "urgent"]
    assert one["parameters"] == {"amount": 12.5, "customer": {"id": 7}} and one["retry_number"] == 0
    later = await add(
        client, tenant, queue, name="later", delay_until=(utcnow() + timedelta(hours=1)).isoformat()
    )
    assert later["state"] == "Postponed"
    r = await client.post(
        f"{tasks_url(queue)}/bulk",
        json={"tasks": [{"name": f"b{i}", "parameters": {"i": i}} for i in range(50)]},
        headers=tenant.headers,
    )
    assert r.status_code == 201, r.text
    assert r.json()["added"] == 50 and [t["name"] for t in r.json()["items"]] == [f"b{i}" for i in range(50)]
    assert await count(tenant, queue) == 52
    async with tenant.ctx.sessions() as session:
        audit = (
            (
                await session.execute(
                    sa.select(AuditRecord.changes).where(
                        AuditRecord.action == "add_tasks", AuditRecord.object_id == queue["id"]
                    )
                )
            )
            .scalars()
            .all()
        )
    assert sorted(a["count"] for a in audit) == [1, 1, 50]


async def test_bad_input_changes_nothing(client: httpx.AsyncClient, tenant: Tenant) -> None:
    queue = await create_queue(client, tenant, unique_task_names=True)
    await add(client, tenant, queue, name="Taken")
    url = tasks_url(queue)
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("", {"name": ""}, 422, "name"),
        ("", {"name": "   "}, 422, "name"),
        ("", {"name": "x", "priority": 5}, 422, "priority"),
        ("", {"name": "x", "tags": [""]}, 422, "tags.0"),
        ("", {"name": "x", "deadline": "tomorrow"}, 422, "deadline"),
        ("", {"name": "x\u0000y"}, 422, "name"),
        ("", {"name": "x", "colour": "red"}, 422, "colour"),
        ("", {"name": "taken"}, 409, "name"),
        ("/bulk", {"tasks": []}, 422, "tasks"),
        ("/bulk", {"tasks": [{"name": "ok"}, {"name": "OK"}]}, 409, "tasks.1.name"),
        ("/bulk", {"tasks": [{"name": "ok"}, {"name": "TAKEN"}]}, 409, "tasks.1.name"),
        (
            "/bulk",
            {"tasks": [{"name": "ok"}, {"name": "p", "parameters": {"a": "x" * 70_000}}]},
            422,
            "tasks.1.parameters",
        ),
    ]
    for suffix, body, status, field in cases:
        r = await client.post(url + suffix, json=body, headers=tenant.headers)
        assert r.status_code == status, (body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert field in [e["field"] for e in r.json()["errors"]], (body, r.json())
    assert await count(tenant, queue) == 1
    unknown = f"{QUEUES}/{uuid.uuid4()}/tasks"
    assert (await client.post(unknown, json={"name": "x"}, headers=tenant.headers)).status_code == 404


async def test_bulk_and_csv_limits(ctx: ServiceContext, tenant: Tenant) -> None:
    from rpa_api.app import create_app

    small = dataclasses.replace(
        ctx,
        settings=make_settings(
            ctx.settings.db_url or "", task_bulk_max=3, task_csv_max_rows=3, task_csv_max_bytes=1024
        ),
    )
    transport = httpx.ASGITransport(app=create_app(ctx=small))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        queue = await create_queue(client, tenant)
        r = await client.post(
            f"{tasks_url(queue)}/bulk",
            json={"tasks": [{"name": f"t{i}"} for i in range(4)]},
            headers=tenant.headers,
        )
        assert r.status_code == 413 and r.json()["errors"][0]["field"] == "tasks", r.text
        assert "at most 3" in r.json()["detail"]
        r = await upload(client, tenant, queue, "name\na\nb\nc\nd\n")
        assert r.status_code == 413 and r.json()["errors"][0]["field"] == "file", r.text
        r = await upload(client, tenant, queue, "name\n" + "x" * 70_000 + "\n")
        assert r.status_code == 413 and r.headers["content-type"].startswith("application/problem+json")
        r = await upload(client, tenant, queue, "name\na\nb\nc\n")
        assert r.status_code == 201 and r.json()["added"] == 3
    assert await count(tenant, queue) == 3


async def test_csv_upload(client: httpx.AsyncClient, tenant: Tenant) -> None:
    queue = await create_queue(client, tenant)
    text = (
        "\ufeffName,Priority,Tags,Deadline,delay_until,Description,invoice,amount\r\n"
        'inv-1,high,eu;urgent,2030-01-01T00:00:00Z,,"first, with a comma",A-1,10.50\r\n'
        "inv-2,,,,,,A-2,\r\n"
        '"inv-3",1,x,,2099-01-01T00:00:00,"two\nlines",A-3,7\r\n'
        "\r\n"
    )
    r = await upload(client, tenant, queue, text)
    assert r.status_code == 201, r.text
    assert r.json() == {"added": 3}
    listed = (await client.get(tasks_url(queue), params={"sort": "name"}, headers=tenant.headers)).json()[
        "items"
    ]
    first, second, third = listed
    assert first["name"] == "inv-1" and first["priority"] == 3 and first["tags"] == ["eu", "urgent"]
    assert (
        first["deadline"].startswith("2030-01-01T00:00:00") and first["description"] == "first, with a comma"
    )
    assert first["parameters"] == {"invoice": "A-1", "amount": "10.50"}
    assert (
        second["priority"] == 2
        and second["tags"] == []
        and second["parameters"] == {"invoice": "A-2", "amount": ""}
    )
    assert third["state"] == "Postponed" and third["delay_until"].startswith("2099-01-01T00:00:00")
    assert third["description"] == "two\nlines"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("name,priority\nok,low\nbad,urgent\n", 3, "priority"),
        ("name,deadline\nok,\nok2,2020-13-45\n", 3, "deadline"),
        ("name,x\nok,1\nshort\n", 3, "cells"),
        ('name,x\nok,1\n"two\nline",1\n   ,2\n', 5, "name"),  # the row after a two-line cell
        ("title,x\na,1\n", 1, "'name' column"),
        ("name,Name\na,b\n", 1, "twice"),
        ('name\nok\n"unclosed\n', 3, "malformed"),
    ],
)
async def test_csv_bad_row_named_by_line_and_nothing_written(
    client: httpx.AsyncClient, tenant: Tenant, text: str, line: int, words: str
) -> None:
    queue = await create_queue(client, tenant)
    r = await upload(client, tenant, queue, text)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["errors"][0]["field"] == "file" and f"line {line}" in body["detail"], body
    assert words in body["detail"]
    assert await count(tenant, queue) == 0


async def test_csv_refusals(client: httpx.AsyncClient, tenant: Tenant) -> None:
    queue = await create_queue(client, tenant, unique_task_names=True)
    r = await upload(client, tenant, queue, "name\na\nb\nA\n")
    assert r.status_code == 409 and "line 4" in r.json()["detail"] and r.json()["line"] == 4
    r = await upload(client, tenant, queue, b"name\n\xff\xfe\n")
    assert r.status_code == 422 and "UTF-8" in r.json()["detail"]
    r = await upload(client, tenant, queue, "")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "file"
    r = await upload(client, tenant, queue, "name\n")
    assert r.status_code == 422
    r = await client.post(f"{tasks_url(queue)}/csv", json={"name": "x"}, headers=tenant.headers)
    assert r.status_code == 415
    assert await count(tenant, queue) == 0


async def test_list_filters_and_pagination(client: httpx.AsyncClient, tenant: Tenant) -> None:
    queue = await create_queue(client, tenant)
    now = utcnow()
    await add(
        client,
        tenant,
        queue,
        name="alpha",
        priority=1,
        tags=["eu"],
        deadline=(now + timedelta(hours=1)).isoformat(),
    )
    await add(client, tenant, queue, name="beta", priority=3, tags=["eu", "vip"])
    await add(
        client, tenant, queue, name="gamma", tags=["us"], deadline=(now + timedelta(days=3)).isoformat()
    )
    await add(client, tenant, queue, name="Alphabet", delay_until=(now + timedelta(hours=2)).isoformat())
    url = tasks_url(queue)

    async def names(**params: Any) -> list[str]:
        r = await client.get(url, params={"sort": "name", **params}, headers=tenant.headers)
        assert r.status_code == 200, r.text
        return [t["name"] for t in r.json()["items"]]

    assert await names() == ["Alphabet", "alpha", "beta", "gamma"] or await names() == [
        "alpha",
        "Alphabet",
        "beta",
        "gamma",
    ]
    assert sorted(await names(name="ALPH")) == ["Alphabet", "alpha"]
    assert await names(state="Postponed") == ["Alphabet"]
    assert sorted(await names(state=["Created", "Postponed"])) == ["Alphabet", "alpha", "beta", "gamma"]
    assert await names(priority=3) == ["beta"]
    assert sorted(await names(tag="eu")) == ["alpha", "beta"]
    assert await names(tag=["eu", "vip"]) == ["beta"]
    assert await names(deadline_to=(now + timedelta(days=1)).isoformat()) == ["alpha"]
    assert await names(deadline_from=(now + timedelta(days=1)).isoformat()) == ["gamma"]
    assert len(await names(created_from=(now - timedelta(minutes=1)).isoformat())) == 4
    assert await names(created_to=(now - timedelta(minutes=1)).isoformat()) == []
    r = await client.get(url, params={"sort": "-priority", "limit": 2, "offset": 0}, headers=tenant.headers)
    page = r.json()
    assert page["total"] == 4 and len(page["items"]) == 2 and page["items"][0]["name"] == "beta"
    for params, field in (
        ({"state": "Sleeping"}, "state"),
        ({"priority": 9}, "priority"),
        ({"sort": "colour"}, "sort"),
        ({"created_from": "2030-01-01T00:00:00Z", "created_to": "2020-01-01T00:00:00Z"}, "created_from"),
        ({"deadline_from": "12345"}, "deadline_from"),
    ):
        r = await client.get(url, params=params, headers=tenant.headers)
        assert r.status_code == 422, (params, r.text)
        assert any(e["field"].split(".")[0] == field for e in r.json()["errors"]), r.json()


async def test_get_with_history_and_edits(client: httpx.AsyncClient, tenant: Tenant) -> None:
    queue = await create_queue(client, tenant)
    task = await add(client, tenant, queue, name="edit-me")
    url = f"{tasks_url(queue)}/{task['id']}"
    r = await client.patch(
        url,
        json={"priority": 3, "tags": ["x"], "comment": "checked", "parameters": {"a": 1}},
        headers=tenant.headers,
    )
    assert r.status_code == 200, r.text
    assert r.json()["priority"] == 3 and r.json()["tags"] == ["x"] and r.json()["comment"] == "checked"
    later = (utcnow() + timedelta(hours=1)).isoformat()
    r = await client.patch(
        url,
        json={"state": "Postponed", "delay_until": later, "reason": "wait for bank"},
        headers=tenant.headers,
    )
    assert r.status_code == 200 and r.json()["state"] == "Postponed"
    assert [h["to_state"] for h in r.json()["history"]][-1] == "Postponed"  # the answer has the change
    r = await client.patch(url, json={"delay_until": None}, headers=tenant.headers)
    assert r.status_code == 200 and r.json()["state"] == "Created" and r.json()["delay_until"] is None
    detail = (await client.get(url, headers=tenant.headers)).json()
    steps = [(h["kind"], h["from_state"], h["to_state"], h["actor_type"]) for h in detail["history"]]
    assert steps == [
        ("created", None, "Created", "user"),
        ("edited", None, None, "user"),
        ("edited", None, None, "user"),
        ("state", "Created", "Postponed", "user"),
        ("edited", None, None, "user"),
        ("state", "Postponed", "Created", "user"),
    ]
    assert detail["history"][3]["note"] == "wait for bank"
    async with tenant.ctx.sessions() as session:
        audit = (
            (
                await session.execute(
                    sa.select(AuditRecord.changes).where(
                        AuditRecord.object_id == task["id"], AuditRecord.action == "update"
                    )
                )
            )
            .scalars()
            .all()
        )
    assert any(a.get("state") == {"from": "Created", "to": "Postponed"} for a in audit)


async def test_state_changes_allowed_and_refused(client: httpx.AsyncClient, tenant: Tenant) -> None:
    queue = await create_queue(client, tenant, max_retries=3)
    robot = await add_robot(tenant)
    task = await add(client, tenant, queue, name="worked")
    url = f"{tasks_url(queue)}/{task['id']}"
    held = await robot_takes(tenant, queue["id"], robot)
    assert held is not None
    # Data of a task a robot works is not changed; nor may it go back to Created by hand.
    for body, field in (
        ({"name": "other"}, "name"),
        ({"state": "Created"}, "state"),
        ({"state": "Postponed", "delay_until": (utcnow() + timedelta(hours=1)).isoformat()}, "state"),
    ):
        r = await client.patch(url, json=body, headers=tenant.headers)
        assert r.status_code == 409 and r.json()["errors"][0]["field"] == field, r.text
    # A person ends it by hand: the robot's finish is refused afterwards, and no auto retry is made.
    r = await client.patch(
        url, json={"state": "Failed (Business)", "reason": "customer closed"}, headers=tenant.headers
    )
    assert (
        r.status_code == 200
        and r.json()["state"] == "Failed (Business)"
        and r.json()["error"] == "customer closed"
    )
    assert r.json()["retried_by_id"] is None
    from rpa_common.taskflow import TaskError

    with pytest.raises(TaskError) as err:
        await robot_finishes(tenant, held, robot, S.SUCCESSFUL)
    assert err.value.code == "not_in_progress"
    # Retry by hand: a new task linked to it; only once.
    r = await client.post(f"{url}/retry", json={"reason": "reopened"}, headers=tenant.headers)
    assert r.status_code == 201, r.text
    retry = r.json()
    assert retry["retry_of_id"] == task["id"] and retry["retry_number"] == 1 and retry["state"] == "Created"
    assert (await client.post(f"{url}/retry", headers=tenant.headers)).status_code == 409
    detail = (await client.get(url, headers=tenant.headers)).json()
    assert detail["retried_by_id"] == retry["id"]
    # Settled by hand; Successful is final.
    r = await client.patch(url, json={"state": "Successful"}, headers=tenant.headers)
    assert r.status_code == 200
    for state in ("Created", "Failed (Application)", "Abandoned", "In Progress", "Postponed"):
        r = await client.patch(url, json={"state": state}, headers=tenant.headers)
        assert r.status_code in (409, 422) and r.json()["errors"][0]["field"] in ("state", "delay_until"), (
            state,
            r.text,
        )
    assert (await client.get(url, headers=tenant.headers)).json()["state"] == "Successful"
    # A waiting task cannot be retried, nor a Successful one.
    retry_url = f"{tasks_url(queue)}/{retry['id']}"
    assert (await client.post(f"{retry_url}/retry", headers=tenant.headers)).status_code == 409
    r = await client.patch(retry_url, json={"state": "Postponed"}, headers=tenant.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "delay_until"
    r = await client.patch(retry_url, json={"state": "Abandoned"}, headers=tenant.headers)
    assert r.status_code == 200 and r.json()["state"] == "Abandoned"
    r = await client.patch(retry_url, json={"state": None}, headers=tenant.headers)
    assert r.status_code == 422


async def test_delete_task(client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant) -> None:
    queue = await create_queue(client, tenant)
    robot = await add_robot(tenant)
    busy = await add(client, tenant, queue, name="busy")
    idle = await add(client, tenant, queue, name="idle")
    assert (await robot_takes(tenant, queue["id"], robot)) is not None
    r = await client.delete(f"{tasks_url(queue)}/{busy['id']}", headers=tenant.headers)
    assert r.status_code == 409
    r = await client.delete(f"{tasks_url(queue)}/{idle['id']}", headers=tenant.headers)
    assert r.status_code == 204
    assert (await client.get(f"{tasks_url(queue)}/{idle['id']}", headers=tenant.headers)).status_code == 404
    # Another account sees neither the task nor the queue.
    for method in ("GET", "PATCH", "DELETE"):
        r = await client.request(
            method,
            f"{tasks_url(queue)}/{busy['id']}",
            json={"comment": "x"} if method == "PATCH" else None,
            headers=other_tenant.headers,
        )
        assert r.status_code == 404
    # A task id under another queue of the same account is 404 too.
    other_queue = await create_queue(client, tenant)
    assert (
        await client.get(f"{tasks_url(other_queue)}/{busy['id']}", headers=tenant.headers)
    ).status_code == 404
