"""Resource groups, resources, values per scope and calendars through the API: CRUD, validation
naming the field, another account's ids, permissions, and the ResourceChanged event (no value)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import sqlalchemy as sa

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import AuditRecord
from rpa_common.nats import subjects
from tests.api.factories import make_group, make_robot
from tests.api.helpers import next_matching
from tests.conftest import Tenant

API = "/api/v1"


async def make_resource(
    client: httpx.AsyncClient, tenant: Tenant, kind: str, name: str | None = None
) -> dict[str, Any]:
    group = await client.post(
        f"{API}/resource-groups", json={"name": f"g-{uuid.uuid4().hex[:8]}"}, headers=tenant.headers
    )
    assert group.status_code == 201, group.text
    r = await client.post(
        f"{API}/resources",
        json={"group_id": group.json()["id"], "name": name or f"res-{uuid.uuid4().hex[:8]}", "kind": kind},
        headers=tenant.headers,
    )
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


def problem_field(r: httpx.Response) -> str | None:
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    errors = r.json().get("errors") or [{}]
    field: str | None = errors[0].get("field")
    return field


async def test_group_and_resource_crud(client: httpx.AsyncClient, tenant: Tenant) -> None:
    g = await client.post(f"{API}/resource-groups", json={"name": "Finance"}, headers=tenant.headers)
    assert g.status_code == 201, g.text
    gid = g.json()["id"]
    dup = await client.post(f"{API}/resource-groups", json={"name": "finance"}, headers=tenant.headers)
    assert dup.status_code == 409 and problem_field(dup) == "name"
    r = await client.post(
        f"{API}/resources", json={"group_id": gid, "name": "ApiUrl", "kind": "text"}, headers=tenant.headers
    )
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert r.json()["values"] == []
    # Names are unique in the account, across groups.
    g2 = await client.post(f"{API}/resource-groups", json={"name": "Other"}, headers=tenant.headers)
    dup = await client.post(
        f"{API}/resources",
        json={"group_id": g2.json()["id"], "name": "apiurl", "kind": "text"},
        headers=tenant.headers,
    )
    assert dup.status_code == 409 and problem_field(dup) == "name"
    bad_kind = await client.post(
        f"{API}/resources", json={"group_id": gid, "name": "x", "kind": "blob"}, headers=tenant.headers
    )
    assert bad_kind.status_code == 422 and problem_field(bad_kind) == "kind"
    no_group = await client.post(
        f"{API}/resources",
        json={"group_id": str(uuid.uuid4()), "name": "x", "kind": "text"},
        headers=tenant.headers,
    )
    assert no_group.status_code == 404 and problem_field(no_group) == "group_id"

    listed = await client.get(f"{API}/resources", params={"group_id": gid}, headers=tenant.headers)
    assert [x["name"] for x in listed.json()["items"]] == ["ApiUrl"]
    groups = await client.get(f"{API}/resource-groups", params={"name": "fin"}, headers=tenant.headers)
    assert groups.json()["items"][0]["resource_count"] == 1

    moved = await client.patch(
        f"{API}/resources/{rid}",
        json={"group_id": g2.json()["id"], "name": "BaseUrl"},
        headers=tenant.headers,
    )
    assert moved.status_code == 200 and moved.json()["name"] == "BaseUrl", moved.text
    null = await client.patch(f"{API}/resources/{rid}", json={"name": None}, headers=tenant.headers)
    assert null.status_code == 422 and problem_field(null) == "name"

    busy = await client.delete(f"{API}/resource-groups/{g2.json()['id']}", headers=tenant.headers)
    assert busy.status_code == 409
    assert (await client.delete(f"{API}/resources/{rid}", headers=tenant.headers)).status_code == 204
    assert (await client.get(f"{API}/resources/{rid}", headers=tenant.headers)).status_code == 404
    assert (
        await client.delete(f"{API}/resource-groups/{g2.json()['id']}", headers=tenant.headers)
    ).status_code == 204


async def test_values_per_scope_and_validation(client: httpx.AsyncClient, tenant: Tenant, ctx: Any) -> None:
    res = await make_resource(client, tenant, "text")
    robot = await make_robot(ctx, tenant.account_id)
    group = await make_group(ctx, tenant.account_id, [robot])
    url = f"{API}/resources/{res['id']}/values"

    all_v = await client.put(url, json={"scope": "all", "text": "everyone"}, headers=tenant.headers)
    assert all_v.status_code == 201, all_v.text
    again = await client.put(url, json={"scope": "all", "text": "everyone 2"}, headers=tenant.headers)
    assert again.status_code == 200 and again.json()["id"] == all_v.json()["id"]
    g_v = await client.put(
        url,
        json={"scope": "robot_group", "robot_group_id": str(group.id), "text": "group"},
        headers=tenant.headers,
    )
    assert g_v.status_code == 201, g_v.text
    r_v = await client.put(
        url, json={"scope": "robot", "robot_id": str(robot.id), "text": "mine"}, headers=tenant.headers
    )
    assert r_v.status_code == 201, r_v.text
    values = (await client.get(url, headers=tenant.headers)).json()
    assert sorted(v["text"] for v in values) == ["everyone 2", "group", "mine"]
    only = (await client.get(url, params={"scope": "robot"}, headers=tenant.headers)).json()
    assert [v["text"] for v in only] == ["mine"]

    bad_cases: list[tuple[dict[str, Any], int, str]] = [
        ({"scope": "robot", "text": "x"}, 422, "robot_id"),
        ({"scope": "robot", "robot_id": str(uuid.uuid4()), "text": "x"}, 404, "robot_id"),
        ({"scope": "robot_group", "robot_group_id": str(uuid.uuid4()), "text": "x"}, 404, "robot_group_id"),
        ({"scope": "all", "robot_id": str(robot.id), "text": "x"}, 422, "robot_id"),
        ({"scope": "all"}, 422, "text"),
        ({"scope": "all", "text": "x", "login": "bob"}, 422, "login"),
        ({"scope": "all", "text": "a\u0000b"}, 422, "text"),
        ({"scope": "all", "text": "é" * 40_000}, 422, "text"),
        ({"scope": "everyone", "text": "x"}, 422, "scope"),
    ]
    for body, status, field in bad_cases:
        r = await client.put(url, json=body, headers=tenant.headers)
        assert r.status_code == status, (body, r.text)
        assert problem_field(r) == field, (body, r.text)
    # Nothing of the bad requests was written.
    assert len((await client.get(url, headers=tenant.headers)).json()) == 3

    rv = await client.delete(f"{url}/{r_v.json()['id']}", headers=tenant.headers)
    assert rv.status_code == 204
    assert (await client.get(f"{url}/{r_v.json()['id']}", headers=tenant.headers)).status_code == 404


async def test_another_accounts_objects_are_404(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant, ctx: Any
) -> None:
    res = await make_resource(client, tenant, "text")
    value = await client.put(
        f"{API}/resources/{res['id']}/values", json={"scope": "all", "text": "x"}, headers=tenant.headers
    )
    h = other_tenant.headers
    assert (await client.get(f"{API}/resources/{res['id']}", headers=h)).status_code == 404
    assert (await client.get(f"{API}/resource-groups/{res['group_id']}", headers=h)).status_code == 404
    r = await client.put(f"{API}/resources/{res['id']}/values", json={"scope": "all", "text": "y"}, headers=h)
    assert r.status_code == 404
    assert (
        await client.delete(f"{API}/resources/{res['id']}/values/{value.json()['id']}", headers=h)
    ).status_code == 404
    # Nor may a value point at another account's robot.
    foreign = await make_robot(ctx, other_tenant.account_id)
    r = await client.put(
        f"{API}/resources/{res['id']}/values",
        json={"scope": "robot", "robot_id": str(foreign.id), "text": "x"},
        headers=tenant.headers,
    )
    assert r.status_code == 404 and problem_field(r) == "robot_id"
    listed = await client.get(f"{API}/resources", headers=h)
    assert res["id"] not in [x["id"] for x in listed.json()["items"]]


async def test_permissions(client: httpx.AsyncClient, tenant: Tenant) -> None:
    _, _, viewer = await tenant.user("Viewer")
    _, _, developer = await tenant.user("Developer")
    r = await client.post(f"{API}/resource-groups", json={"name": "v"}, headers=viewer)
    assert r.status_code == 403
    assert (await client.get(f"{API}/resources", headers=viewer)).status_code == 200
    r = await client.post(f"{API}/resource-groups", json={"name": "d"}, headers=developer)
    assert r.status_code == 201
    r = await client.post(f"{API}/calendars", json={"name": "c"}, headers=developer)
    assert r.status_code == 201
    assert (await client.post(f"{API}/calendars", json={"name": "c2"}, headers=viewer)).status_code == 403


async def test_calendars(client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant) -> None:
    body = {
        "name": "France",
        "time_zone": "Europe/Paris",
        "weekend_days": [7, 6],
        "days": [
            {"day": "2026-12-25", "working": False, "note": "Christmas"},
            {"day": "2026-12-26", "working": True},
        ],
    }
    r = await client.post(f"{API}/calendars", json=body, headers=tenant.headers)
    assert r.status_code == 201, r.text
    cal = r.json()
    assert cal["weekend_days"] == [6, 7] and [d["day"] for d in cal["days"]] == ["2026-12-25", "2026-12-26"]
    for bad, field in (
        ({"time_zone": "Mars/Olympus"}, "time_zone"),
        ({"weekend_days": [8]}, "weekend_days.0"),
        ({"weekend_days": [6, 6]}, "weekend_days"),
        ({"days": [{"day": "2026-01-01"}, {"day": "2026-01-01"}]}, "days"),
        ({"days": [{"day": "2026-02-30"}]}, "days.0.day"),
        ({"days": [{"day": 0}]}, "days.0.day"),
        ({"days": [{"day": "2026-01-01", "working": 0}]}, "days.0.working"),
    ):
        r = await client.post(
            f"{API}/calendars", json={"name": f"c-{uuid.uuid4().hex[:6]}", **bad}, headers=tenant.headers
        )
        assert r.status_code == 422, (bad, r.text)
        assert problem_field(r) == field, (bad, r.text)
    r = await client.patch(
        f"{API}/calendars/{cal['id']}",
        json={"time_zone": "America/New_York", "days": []},
        headers=tenant.headers,
    )
    assert r.status_code == 200 and r.json()["days"] == [] and r.json()["time_zone"] == "America/New_York"
    bad = await client.patch(
        f"{API}/calendars/{cal['id']}", json={"time_zone": "Nowhere"}, headers=tenant.headers
    )
    assert bad.status_code == 422 and problem_field(bad) == "time_zone"
    assert (await client.get(f"{API}/calendars/{cal['id']}", headers=other_tenant.headers)).status_code == 404

    # A Calendar resource refers to a calendar; the calendar cannot go while it is used.
    res = await make_resource(client, tenant, "calendar")
    url = f"{API}/resources/{res['id']}/values"
    r = await client.put(url, json={"scope": "all", "calendar_id": cal["id"]}, headers=tenant.headers)
    assert r.status_code == 201 and r.json()["calendar_id"] == cal["id"], r.text
    r = await client.put(url, json={"scope": "all", "text": "x"}, headers=tenant.headers)
    assert r.status_code == 422 and problem_field(r) == "text"
    r = await client.put(url, json={"scope": "all", "calendar_id": str(uuid.uuid4())}, headers=tenant.headers)
    assert r.status_code == 404 and problem_field(r) == "calendar_id"
    assert (await client.delete(f"{API}/calendars/{cal['id']}", headers=tenant.headers)).status_code == 409


async def test_a_change_publishes_resource_changed_without_the_value(
    client: httpx.AsyncClient, tenant: Tenant, ctx: Any
) -> None:
    res = await make_resource(client, tenant, "text")
    sub = await ctx.nc.subscribe(subjects.RESOURCE_CHANGED)
    try:
        r = await client.put(
            f"{API}/resources/{res['id']}/values",
            json={"scope": "all", "text": "v-9f3c"},
            headers=tenant.headers,
        )
        assert r.status_code == 201
        data = await next_matching(sub, lambda d: res["id"] in d.decode())
    finally:
        await sub.unsubscribe()
    msg = json.loads(data)
    assert msg["resource_id"] == res["id"] and msg["name"] == res["name"]
    assert "v-9f3c" not in data.decode()


async def test_changes_are_audited(client: httpx.AsyncClient, tenant: Tenant, ctx: Any) -> None:
    res = await make_resource(client, tenant, "text")
    await client.put(
        f"{API}/resources/{res['id']}/values", json={"scope": "all", "text": "a"}, headers=tenant.headers
    )

    async def read(session: Any) -> list[str]:
        rows = await session.execute(
            sa.select(AuditRecord.action).where(
                AuditRecord.account_id == tenant.account_id, AuditRecord.object_id == res["id"]
            )
        )
        return sorted(r[0] for r in rows)

    assert await run_in_transaction(ctx.sessions, read) == ["create", "create_value"]
