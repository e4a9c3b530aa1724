"""Robot groups: CRUD, membership seen from both sides, a robot in several groups, isolation."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.api.test_robots import create_robot
from tests.conftest import Tenant

GROUPS = "/api/v1/robot-groups"


async def create_group(client: httpx.AsyncClient, tenant: Tenant, **body: Any) -> dict[str, Any]:
    body.setdefault("name", f"group-{uuid.uuid4().hex[:8]}")
    r = await client.post(GROUPS, json=body, headers=tenant.headers)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


def names(items: list[dict[str, Any]]) -> list[str]:
    return sorted(x["name"] for x in items)


async def test_membership_both_ways(client: httpx.AsyncClient, tenant: Tenant) -> None:
    r1 = await create_robot(client, tenant, name="r1")
    r2 = await create_robot(client, tenant, name="r2")
    r3 = await create_robot(client, tenant, name="r3")
    finance = await create_group(client, tenant, name="finance", robot_ids=[r1["id"], r2["id"]])
    night = await create_group(client, tenant, name="night")
    assert names(finance["robots"]) == ["r1", "r2"] and finance["robot_count"] == 2

    # Add (twice: idempotent), remove, replace.
    for _ in range(2):
        r = await client.post(f"{GROUPS}/{night['id']}/robots/{r1['id']}", headers=tenant.headers)
        assert r.status_code == 200, r.text
    assert names(r.json()["robots"]) == ["r1"]
    robot = (await client.get(f"/api/v1/robots/{r1['id']}", headers=tenant.headers)).json()
    assert names(robot["groups"]) == ["finance", "night"]

    r = await client.put(
        f"{GROUPS}/{finance['id']}/robots",
        json={"robot_ids": [r2["id"], r3["id"], r3["id"]]},
        headers=tenant.headers,
    )
    assert r.status_code == 200, r.text
    assert names(r.json()["robots"]) == ["r2", "r3"]
    robot = (await client.get(f"/api/v1/robots/{r1['id']}", headers=tenant.headers)).json()
    assert names(robot["groups"]) == ["night"]

    r = await client.delete(f"{GROUPS}/{night['id']}/robots/{r1['id']}", headers=tenant.headers)
    assert r.status_code == 204
    r = await client.delete(f"{GROUPS}/{night['id']}/robots/{r1['id']}", headers=tenant.headers)
    assert r.status_code == 404
    detail = (await client.get(f"{GROUPS}/{night['id']}", headers=tenant.headers)).json()
    assert detail["robots"] == [] and detail["robot_count"] == 0

    listing = (await client.get(GROUPS, params={"robot_id": r3["id"]}, headers=tenant.headers)).json()
    assert names(listing["items"]) == ["finance"] and listing["items"][0]["robot_count"] == 2
    by_group = (
        await client.get("/api/v1/robots", params={"group_id": finance["id"]}, headers=tenant.headers)
    ).json()
    assert names(by_group["items"]) == ["r2", "r3"]

    # Deleting a group keeps its robots.
    assert (await client.delete(f"{GROUPS}/{finance['id']}", headers=tenant.headers)).status_code == 204
    assert (await client.get(f"{GROUPS}/{finance['id']}", headers=tenant.headers)).status_code == 404
    robot = (await client.get(f"/api/v1/robots/{r2['id']}", headers=tenant.headers)).json()
    assert robot["groups"] == []


async def test_crud_and_errors(client: httpx.AsyncClient, tenant: Tenant) -> None:
    g = await create_group(client, tenant, name="ops", description="operations")
    r = await client.post(GROUPS, json={"name": "ops"}, headers=tenant.headers)
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "name"
    r = await client.patch(
        f"{GROUPS}/{g['id']}", json={"name": "ops2", "description": "x"}, headers=tenant.headers
    )
    assert r.status_code == 200 and r.json()["name"] == "ops2"
    other = await create_group(client, tenant, name="other")
    r = await client.patch(f"{GROUPS}/{other['id']}", json={"name": "ops2"}, headers=tenant.headers)
    assert r.status_code == 409
    r = await client.put(
        f"{GROUPS}/{g['id']}/robots", json={"robot_ids": [str(uuid.uuid4())]}, headers=tenant.headers
    )
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "robot_ids"
    r = await client.post(
        GROUPS, json={"name": "bad", "robot_ids": [str(uuid.uuid4())]}, headers=tenant.headers
    )
    assert r.status_code == 404
    listing = (await client.get(GROUPS, params={"sort": "name"}, headers=tenant.headers)).json()
    assert [x["name"] for x in listing["items"]] == ["ops2", "other"]  # the refused one left nothing
    r = await client.post(f"{GROUPS}/{g['id']}/robots/{uuid.uuid4()}", headers=tenant.headers)
    assert r.status_code == 404


async def test_another_accounts_group_and_robot_are_404(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = await create_group(client, other_tenant)
    their_robot = await create_robot(client, other_tenant)
    mine = await create_group(client, tenant)
    for method, url in (
        ("GET", f"{GROUPS}/{theirs['id']}"),
        ("PATCH", f"{GROUPS}/{theirs['id']}"),
        ("DELETE", f"{GROUPS}/{theirs['id']}"),
        ("POST", f"{GROUPS}/{mine['id']}/robots/{their_robot['id']}"),
    ):
        r = await client.request(
            method, url, json={"description": "x"} if method == "PATCH" else None, headers=tenant.headers
        )
        assert r.status_code == 404, (method, url, r.text)
    r = await client.put(
        f"{GROUPS}/{mine['id']}/robots", json={"robot_ids": [their_robot["id"]]}, headers=tenant.headers
    )
    assert r.status_code == 404


async def test_permissions(client: httpx.AsyncClient, tenant: Tenant) -> None:
    g = await create_group(client, tenant)
    robot = await create_robot(client, tenant)
    _, _, viewer = await tenant.user("Viewer")
    assert (await client.get(f"{GROUPS}/{g['id']}", headers=viewer)).status_code == 200
    assert (await client.post(GROUPS, json={"name": "v"}, headers=viewer)).status_code == 403
    assert (await client.post(f"{GROUPS}/{g['id']}/robots/{robot['id']}", headers=viewer)).status_code == 403
