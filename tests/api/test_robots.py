"""Robots through the API: the key is shown once and stored hashed, rotation and deactivation reach
the gateways over NATS, lists filter and sort, deletes respect running work, accounts are isolated."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import sqlalchemy as sa

from rpa_common.models import AuditRecord, Job, Process, ProcessVersion, Robot
from rpa_common.models.enums import JobState, RobotStatus
from rpa_common.nats import subjects
from rpa_common.nats.messages import RobotChanged
from rpa_common.security import key_matches
from rpa_common.service import ServiceContext
from tests.api.helpers import next_matching
from tests.conftest import Tenant

ROBOTS = "/api/v1/robots"


async def create_robot(client: httpx.AsyncClient, tenant: Tenant, **body: Any) -> dict[str, Any]:
    body.setdefault("name", f"robot-{uuid.uuid4().hex[:8]}")
    r = await client.post(ROBOTS, json=body, headers=tenant.headers)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


async def stored_robot(ctx: ServiceContext, robot_id: str) -> Robot:
    async with ctx.sessions() as s:
        robot = await s.get(Robot, uuid.UUID(robot_id))
        assert robot is not None
        return robot


def changed_for(robot_id: str, change: str) -> Any:
    def match(data: bytes) -> bool:
        msg = RobotChanged.decode(data)
        return str(msg.robot_id) == robot_id and msg.change == change

    return match


async def test_key_is_shown_once_and_stored_hashed(
    client: httpx.AsyncClient, ctx: ServiceContext, tenant: Tenant
) -> None:
    robot = await create_robot(
        client, tenant, name="invoice-bot-1", description="books invoices", role="unattended"
    )
    key = robot["key"]
    assert key.startswith("rbk_")
    assert robot["role"] == "unattended" and robot["is_active"] is True
    assert robot["status"] == "Disconnected" and robot["last_heartbeat_at"] is None
    assert robot["groups"] == [] and "key_hash" not in robot
    assert key.split("_")[1] == robot["key_prefix"]

    stored = await stored_robot(ctx, robot["id"])
    assert key not in (stored.key_hash, stored.key_prefix)
    assert key_matches(key, stored.key_hash)

    listing = await client.get(ROBOTS, headers=tenant.headers)
    detail = await client.get(f"{ROBOTS}/{robot['id']}", headers=tenant.headers)
    assert listing.status_code == 200 and detail.status_code == 200
    for text in (listing.text, detail.text):
        assert key not in text and "key_hash" not in text and stored.key_hash not in text
    assert [r["name"] for r in listing.json()["items"]] == ["invoice-bot-1"]
    assert "key" not in detail.json()

    async with ctx.sessions() as s:
        audits = (
            (await s.execute(sa.select(AuditRecord).where(AuditRecord.object_id == robot["id"])))
            .scalars()
            .all()
        )
    assert [a.action for a in audits] == ["create"]
    assert key not in str(audits[0].changes)


async def test_duplicate_name_is_409_and_bad_fields_422(client: httpx.AsyncClient, tenant: Tenant) -> None:
    await create_robot(client, tenant, name="twin")
    r = await client.post(ROBOTS, json={"name": "twin"}, headers=tenant.headers)
    assert r.status_code == 409
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["field"] == "name"

    for body, field in (
        ({"name": "x", "role": "janitor"}, "role"),
        ({"name": ""}, "name"),
        ({"name": "x", "status": "Ready"}, "status"),  # read-only: not accepted
    ):
        r = await client.post(ROBOTS, json=body, headers=tenant.headers)
        assert r.status_code == 422, (body, r.text)
        assert field in [e["field"] for e in r.json()["errors"]], r.text
    # An unknown id in the body is 404 naming its field, as an unknown id in the path.
    r = await client.post(ROBOTS, json={"name": "x", "folder_id": str(uuid.uuid4())}, headers=tenant.headers)
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "folder_id", r.text

    r = await client.patch(f"{ROBOTS}/{uuid.uuid4()}", json={"machine": "pc"}, headers=tenant.headers)
    assert r.status_code == 422
    listing = await client.get(ROBOTS, headers=tenant.headers)
    assert listing.json()["total"] == 1  # nothing half-written


async def test_rotate_key_replaces_it_and_tells_the_gateway(
    client: httpx.AsyncClient, ctx: ServiceContext, tenant: Tenant
) -> None:
    robot = await create_robot(client, tenant)
    sub = await ctx.nc.subscribe(subjects.ROBOT_CHANGED)
    try:
        r = await client.post(f"{ROBOTS}/{robot['id']}/rotate-key", headers=tenant.headers)
        assert r.status_code == 200, r.text
        assert r.headers["cache-control"] == "no-store"
        new_key = r.json()["key"]
        assert new_key.startswith("rbk_") and new_key != robot["key"]
        await next_matching(sub, changed_for(robot["id"], "key_rotated"))
    finally:
        await sub.unsubscribe()
    stored = await stored_robot(ctx, robot["id"])
    assert key_matches(new_key, stored.key_hash)
    assert not key_matches(robot["key"], stored.key_hash)
    detail = await client.get(f"{ROBOTS}/{robot['id']}", headers=tenant.headers)
    assert new_key not in detail.text and detail.json()["key_prefix"] == new_key.split("_")[1]


async def test_deactivate_and_reactivate_publish(
    client: httpx.AsyncClient, ctx: ServiceContext, tenant: Tenant
) -> None:
    robot = await create_robot(client, tenant)
    sub = await ctx.nc.subscribe(subjects.ROBOT_CHANGED)
    try:
        r = await client.patch(f"{ROBOTS}/{robot['id']}", json={"is_active": False}, headers=tenant.headers)
        assert r.status_code == 200, r.text
        assert r.json()["is_active"] is False
        await next_matching(sub, changed_for(robot["id"], "deactivated"))
        r = await client.patch(
            f"{ROBOTS}/{robot['id']}", json={"is_active": True, "description": "back"}, headers=tenant.headers
        )
        assert r.json()["is_active"] is True and r.json()["description"] == "back"
        await next_matching(sub, changed_for(robot["id"], "activated"))
    finally:
        await sub.unsubscribe()
    r = await client.patch(f"{ROBOTS}/{robot['id']}", json={"is_active": None}, headers=tenant.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "is_active"


async def test_list_filters_sorting_and_paging(client: httpx.AsyncClient, tenant: Tenant) -> None:
    a = await create_robot(client, tenant, name="Alpha_1", role="attended")
    b = await create_robot(client, tenant, name="beta-2", role="unattended", is_active=False)
    c = await create_robot(client, tenant, name="gamma%3", role="coordinator")
    r = await client.post("/api/v1/robot-groups", json={"name": "g"}, headers=tenant.headers)
    group_id = r.json()["id"]
    await client.post(f"/api/v1/robot-groups/{group_id}/robots/{c['id']}", headers=tenant.headers)

    async def names(**params: Any) -> list[str]:
        r = await client.get(ROBOTS, params=params, headers=tenant.headers)
        assert r.status_code == 200, r.text
        return [x["name"] for x in r.json()["items"]]

    assert await names(sort="name") == ["Alpha_1", "beta-2", "gamma%3"]
    assert await names(sort="-name") == ["gamma%3", "beta-2", "Alpha_1"]
    assert await names(role="unattended") == ["beta-2"]
    assert await names(role=["attended", "coordinator"], sort="name") == ["Alpha_1", "gamma%3"]
    assert await names(is_active="false") == ["beta-2"]
    assert await names(name="ALPHA") == ["Alpha_1"]
    assert await names(name="%") == ["gamma%3"]  # taken literally
    assert await names(name="_") == ["Alpha_1"]  # not a wildcard either
    assert await names(group_id=group_id) == ["gamma%3"]
    assert await names(status="Ready") == []
    assert len(await names(status="Disconnected")) == 3
    page = (
        await client.get(ROBOTS, params={"sort": "name", "limit": 2, "offset": 1}, headers=tenant.headers)
    ).json()
    assert (
        page["total"] == 3
        and page["limit"] == 2
        and [x["name"] for x in page["items"]] == ["beta-2", "gamma%3"]
    )

    r = await client.get(ROBOTS, params={"sort": "key_hash"}, headers=tenant.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "sort"
    r = await client.get(ROBOTS, params={"status": "Sleeping"}, headers=tenant.headers)
    assert r.status_code == 422
    assert a["id"] != b["id"]


async def test_delete_is_refused_while_a_job_is_unfinished(
    client: httpx.AsyncClient, ctx: ServiceContext, tenant: Tenant
) -> None:
    robot = await create_robot(client, tenant)
    job_id = uuid.uuid4()
    async with ctx.sessions() as s:
        process = Process(id=uuid.uuid4(), account_id=tenant.account_id, name=f"p-{job_id.hex[:6]}")
        s.add(process)
        await s.flush()
        version = ProcessVersion(
            id=uuid.uuid4(),
            account_id=tenant.account_id,
            process_id=process.id,
            version="1.0.0",
            entry_point="main.py",
            sha256="0" * 64,
            size=1,
        )
        s.add(version)
        await s.flush()
        s.add(
            Job(
                id=job_id,
                account_id=tenant.account_id,
                process_id=process.id,
                process_version_id=version.id,
                robot_id=uuid.UUID(robot["id"]),
                state=JobState.RUNNING,
            )
        )
        await s.commit()

    r = await client.delete(f"{ROBOTS}/{robot['id']}", headers=tenant.headers)
    assert r.status_code == 409, r.text
    assert (await client.get(f"{ROBOTS}/{robot['id']}", headers=tenant.headers)).status_code == 200

    async with ctx.sessions() as s:
        await s.execute(sa.update(Job).where(Job.id == job_id).values(state=JobState.SUCCESSFUL))
        await s.commit()
    sub = await ctx.nc.subscribe(subjects.ROBOT_CHANGED)
    try:
        r = await client.delete(f"{ROBOTS}/{robot['id']}", headers=tenant.headers)
        assert r.status_code == 204, r.text
        await next_matching(sub, changed_for(robot["id"], "deleted"))
    finally:
        await sub.unsubscribe()
    assert (await client.get(f"{ROBOTS}/{robot['id']}", headers=tenant.headers)).status_code == 404


async def test_read_only_fields_come_from_the_robot(
    client: httpx.AsyncClient, ctx: ServiceContext, tenant: Tenant
) -> None:
    robot = await create_robot(client, tenant)
    async with ctx.sessions() as s:
        await s.execute(
            sa.update(Robot)
            .where(Robot.id == uuid.UUID(robot["id"]))
            .values(status=RobotStatus.READY, machine="WS-042", version="1.4.2")
        )
        await s.commit()
    detail = (await client.get(f"{ROBOTS}/{robot['id']}", headers=tenant.headers)).json()
    assert (detail["status"], detail["machine"], detail["version"]) == ("Ready", "WS-042", "1.4.2")


async def test_another_accounts_robot_is_404(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    robot = await create_robot(client, other_tenant)
    rid = robot["id"]
    for method, url, body in (
        ("GET", f"{ROBOTS}/{rid}", None),
        ("PATCH", f"{ROBOTS}/{rid}", {"description": "mine now"}),
        ("DELETE", f"{ROBOTS}/{rid}", None),
        ("POST", f"{ROBOTS}/{rid}/rotate-key", None),
    ):
        r = await client.request(method, url, json=body, headers=tenant.headers)
        assert r.status_code == 404, (method, url, r.text)
    listing = await client.get(ROBOTS, headers=tenant.headers)
    assert listing.json()["total"] == 0
    # The owner's robot is untouched.
    r = await client.get(f"{ROBOTS}/{rid}", headers=other_tenant.headers)
    assert r.json()["description"] == ""


async def test_permissions(client: httpx.AsyncClient, tenant: Tenant) -> None:
    robot = await create_robot(client, tenant)
    _, _, viewer = await tenant.user("Viewer")
    _, _, operator = await tenant.user("Operator")
    assert (await client.get(ROBOTS, headers=viewer)).status_code == 200
    assert (await client.post(ROBOTS, json={"name": "v"}, headers=viewer)).status_code == 403
    assert (await client.post(f"{ROBOTS}/{robot['id']}/rotate-key", headers=viewer)).status_code == 403
    assert (await client.delete(f"{ROBOTS}/{robot['id']}", headers=operator)).status_code == 403
    r = await client.patch(f"{ROBOTS}/{robot['id']}", json={"is_active": False}, headers=operator)
    assert r.status_code == 200
    assert (await client.get(ROBOTS)).status_code == 401


async def folder_user(
    ctx: ServiceContext, tenant: Tenant, *perms: tuple[str, str]
) -> tuple[str, dict[str, str]]:
    """A folder and a user whose only role sees that folder alone: (folder id, auth headers)."""
    from rpa_common.models import AccessFolder, Role, RoleFolder, RolePermission, User, UserRole
    from rpa_common.models.enums import PermissionAction, PermissionObject
    from rpa_common.security import issue_access_token

    folder_id, role_id, user_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with ctx.sessions() as s:
        s.add(AccessFolder(id=folder_id, account_id=tenant.account_id, name=f"f-{folder_id.hex[:8]}"))
        s.add(Role(id=role_id, account_id=tenant.account_id, name=f"r-{role_id.hex[:8]}", all_folders=False))
        s.add(User(id=user_id, account_id=tenant.account_id, username=f"u-{user_id.hex[:12]}"))
        await s.flush()
        s.add(RoleFolder(role_id=role_id, folder_id=folder_id))
        s.add(UserRole(user_id=user_id, role_id=role_id))
        for obj, action in perms:
            s.add(
                RolePermission(role_id=role_id, object=PermissionObject(obj), action=PermissionAction(action))
            )
        await s.commit()
    token = issue_access_token(ctx.settings, user_id=user_id, account_id=tenant.account_id, token_version=0)
    return str(folder_id), {"Authorization": f"Bearer {token}"}


async def test_folder_restricted_roles_see_only_their_folders(
    client: httpx.AsyncClient, ctx: ServiceContext, tenant: Tenant
) -> None:
    folder_id, headers = await folder_user(ctx, tenant, ("robots", "read"), ("robots", "create"))
    # Objects in no folder are visible to every role of the account (the rule changed with issue 12:
    # they used to be hidden from folder-limited roles); those of another folder are not.
    other_folder, _ = await folder_user(ctx, tenant, ("robots", "read"))
    unfiled = await create_robot(client, tenant, name="unfiled")
    filed = await create_robot(client, tenant, name="filed", folder_id=folder_id)
    hidden = await create_robot(client, tenant, name="hidden", folder_id=other_folder)
    listing = (await client.get(ROBOTS, headers=headers)).json()
    assert [r["name"] for r in listing["items"]] == ["filed", "unfiled"]
    assert (await client.get(f"{ROBOTS}/{hidden['id']}", headers=headers)).status_code == 404
    assert (await client.get(f"{ROBOTS}/{unfiled['id']}", headers=headers)).status_code == 200
    assert (await client.get(f"{ROBOTS}/{filed['id']}", headers=headers)).status_code == 200
    r = await client.post(ROBOTS, json={"name": "mine", "folder_id": folder_id}, headers=headers)
    assert r.status_code == 201
    r = await client.post(ROBOTS, json={"name": "elsewhere", "folder_id": other_folder}, headers=headers)
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "folder_id"
    r = await client.post(ROBOTS, json={"name": "nowhere"}, headers=headers)
    assert r.status_code == 201, r.text
