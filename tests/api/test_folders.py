"""Access folders over HTTP: CRUD, unique names, folder-limited roles, folders in use."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import sqlalchemy as sa

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import AccessFolder, Robot
from rpa_common.models.enums import RobotRole
from tests.conftest import Tenant

PROBLEM = "application/problem+json"


def assert_problem(resp: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = resp.json()
    assert body["status"] == status
    if field is not None:
        assert field in [e["field"] for e in body.get("errors", [])], body
    return body


async def test_folder_crud(client: httpx.AsyncClient, tenant: Tenant) -> None:
    resp = await client.post(
        "/api/v1/folders", json={"name": "Finance", "description": "AP/AR"}, headers=tenant.headers
    )
    assert resp.status_code == 201, resp.text
    folder = resp.json()
    assert folder["name"] == "Finance" and folder["description"] == "AP/AR"
    await client.post("/api/v1/folders", json={"name": "HR"}, headers=tenant.headers)

    assert (await client.get(f"/api/v1/folders/{folder['id']}", headers=tenant.headers)).json() == folder
    page = (
        await client.get("/api/v1/folders", params={"sort": "name", "limit": 1}, headers=tenant.headers)
    ).json()
    assert page["total"] == 2 and [f["name"] for f in page["items"]] == ["Finance"]
    page = (
        await client.get("/api/v1/folders", params={"sort": "-name", "offset": 1}, headers=tenant.headers)
    ).json()
    assert [f["name"] for f in page["items"]] == ["Finance"]
    filtered = (await client.get("/api/v1/folders", params={"name": "H"}, headers=tenant.headers)).json()
    assert [f["name"] for f in filtered["items"]] == ["HR"]

    resp = await client.patch(
        f"/api/v1/folders/{folder['id']}", json={"name": "Accounting"}, headers=tenant.headers
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["name"] == "Accounting" and resp.json()["description"] == "AP/AR"

    assert (await client.delete(f"/api/v1/folders/{folder['id']}", headers=tenant.headers)).status_code == 204
    assert_problem(await client.get(f"/api/v1/folders/{folder['id']}", headers=tenant.headers), 404)
    assert_problem(await client.delete(f"/api/v1/folders/{folder['id']}", headers=tenant.headers), 404)


async def test_folder_names_and_validation(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    first = await client.post("/api/v1/folders", json={"name": "Shared"}, headers=tenant.headers)
    assert first.status_code == 201
    assert_problem(
        await client.post("/api/v1/folders", json={"name": "shared"}, headers=tenant.headers), 409, "name"
    )
    # Unique per account only.
    assert (
        await client.post("/api/v1/folders", json={"name": "Shared"}, headers=other_tenant.headers)
    ).status_code == 201
    other = (await client.post("/api/v1/folders", json={"name": "Other"}, headers=tenant.headers)).json()
    assert_problem(
        await client.patch(f"/api/v1/folders/{other['id']}", json={"name": "SHARED"}, headers=tenant.headers),
        409,
        "name",
    )
    assert_problem(
        await client.post("/api/v1/folders", json={"name": "   "}, headers=tenant.headers), 422, "name"
    )
    assert_problem(
        await client.post("/api/v1/folders", json={"name": "x" * 101}, headers=tenant.headers), 422, "name"
    )
    assert_problem(
        await client.post("/api/v1/folders", json={"name": "x", "colour": 1}, headers=tenant.headers),
        422,
        "colour",
    )
    assert_problem(await client.post("/api/v1/folders", json={}, headers=tenant.headers), 422, "name")
    assert_problem(
        await client.get("/api/v1/folders", params={"sort": "colour"}, headers=tenant.headers), 422, "sort"
    )
    assert_problem(
        await client.get("/api/v1/folders", params={"limit": 0}, headers=tenant.headers), 422, "limit"
    )
    assert_problem(await client.get("/api/v1/folders/not-a-uuid", headers=tenant.headers), 404)
    resp = await client.post(
        "/api/v1/folders", content=b"name=x", headers={**tenant.headers, "content-type": "text/plain"}
    )
    assert_problem(resp, 415)
    async with tenant.ctx.sessions() as session:
        names = (
            await session.execute(
                sa.select(AccessFolder.name).where(AccessFolder.account_id == tenant.account_id)
            )
        ).scalars()
        assert sorted(names) == ["Other", "Shared"]  # the failures wrote nothing


async def test_folder_limited_role_sees_only_its_folders(client: httpx.AsyncClient, tenant: Tenant) -> None:
    mine = (await client.post("/api/v1/folders", json={"name": "Mine"}, headers=tenant.headers)).json()
    hidden = (await client.post("/api/v1/folders", json={"name": "Hidden"}, headers=tenant.headers)).json()
    headers = await tenant.folder_user(
        "Folder readers",
        [
            {"object": "folders", "action": "read"},
            {"object": "folders", "action": "update"},
        ],
        mine["id"],
    )

    listing = (await client.get("/api/v1/folders", headers=headers)).json()
    assert [f["id"] for f in listing["items"]] == [mine["id"]] and listing["total"] == 1
    assert (await client.get(f"/api/v1/folders/{mine['id']}", headers=headers)).status_code == 200
    assert_problem(await client.get(f"/api/v1/folders/{hidden['id']}", headers=headers), 404)
    assert_problem(
        await client.patch(f"/api/v1/folders/{hidden['id']}", json={"name": "x"}, headers=headers), 404
    )
    me = (await client.get("/api/v1/auth/me", headers=headers)).json()
    assert me["all_folders"] is False and me["folder_ids"] == [mine["id"]]
    assert (await client.get("/api/v1/me", headers=headers)).json() == me
    assert me["folders"] == [{"id": mine["id"], "name": "Mine"}]
    assert me["can"] == {"folders": ["read", "update"]}
    admin = (await client.get("/api/v1/me", headers=tenant.headers)).json()
    assert admin["folders"] == "all" and "delete" in admin["can"]["robots"]
    assert [r["name"] for r in admin["roles"]] == ["Administrator"]
    assert admin["account"]["id"] == str(tenant.account_id)


async def test_objects_in_no_folder_are_visible_to_every_role(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    """The rule for folder-limited roles: their folders plus objects in no folder; a robot in another
    folder is absent from the list and 404 to read, change and delete."""
    from tests.api.factories import make_robot

    mine = (await client.post("/api/v1/folders", json={"name": "Mine"}, headers=tenant.headers)).json()
    hidden = (await client.post("/api/v1/folders", json={"name": "Hidden"}, headers=tenant.headers)).json()
    in_mine = await make_robot(tenant.ctx, tenant.account_id, folder_id=uuid.UUID(mine["id"]))
    in_none = await make_robot(tenant.ctx, tenant.account_id)
    in_hidden = await make_robot(tenant.ctx, tenant.account_id, folder_id=uuid.UUID(hidden["id"]))
    readers = await tenant.folder_user("Robot readers", [{"object": "robots", "action": "read"}], mine["id"])
    editors = await tenant.folder_user(
        "Robot editors",
        [{"object": "robots", "action": a} for a in ("read", "update", "delete")],
        mine["id"],
    )

    listed = (await client.get("/api/v1/robots", headers=readers)).json()
    assert {r["id"] for r in listed["items"]} == {str(in_mine.id), str(in_none.id)}
    assert (await client.get(f"/api/v1/robots/{in_none.id}", headers=readers)).status_code == 200
    # Visible is not writable: the permission still decides.
    assert_problem(
        await client.patch(f"/api/v1/robots/{in_none.id}", json={"description": "x"}, headers=readers), 403
    )
    resp = await client.patch(f"/api/v1/robots/{in_none.id}", json={"description": "x"}, headers=editors)
    assert resp.status_code == 200, resp.text
    # Moving an object out of one's folders into none is allowed; into a hidden folder is not.
    assert_problem(
        await client.patch(f"/api/v1/robots/{in_mine.id}", json={"folder_id": hidden["id"]}, headers=editors),
        403,
        "folder_id",
    )
    for method, kw in (("GET", {}), ("PATCH", {"json": {"description": "x"}}), ("DELETE", {})):
        assert_problem(
            await client.request(method, f"/api/v1/robots/{in_hidden.id}", headers=editors, **kw), 404
        )
    shown = (await client.get(f"/api/v1/robots/{in_hidden.id}", headers=tenant.headers)).json()
    assert shown["description"] == "" or shown["description"] is None


async def test_folder_in_use_cannot_be_deleted(client: httpx.AsyncClient, tenant: Tenant) -> None:
    folder = (await client.post("/api/v1/folders", json={"name": "Bots"}, headers=tenant.headers)).json()
    folder_id = uuid.UUID(folder["id"])
    robot_id = uuid.uuid4()

    async def add_robot(session: Any) -> None:
        session.add(
            Robot(
                id=robot_id,
                account_id=tenant.account_id,
                folder_id=folder_id,
                name="bot-1",
                role=RobotRole.ATTENDED,
                key_prefix=uuid.uuid4().hex[:12],
                key_hash="0" * 64,
            )
        )

    await run_in_transaction(tenant.ctx.sessions, add_robot)
    body = assert_problem(await client.delete(f"/api/v1/folders/{folder_id}", headers=tenant.headers), 409)
    assert "robot" in body["detail"]
    assert (await client.get(f"/api/v1/folders/{folder_id}", headers=tenant.headers)).status_code == 200

    async def move_robot(session: Any) -> None:
        await session.execute(sa.update(Robot).where(Robot.id == robot_id).values(folder_id=None))

    await run_in_transaction(tenant.ctx.sessions, move_robot)
    assert (await client.delete(f"/api/v1/folders/{folder_id}", headers=tenant.headers)).status_code == 204
