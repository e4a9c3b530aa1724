"""Terminal servers and unattended accounts: coordinator and robot roles are checked, a robot serves one
account, and the password is write-only: encrypted at rest, never in a response or the audit trail."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import sqlalchemy as sa

from rpa_common.models import AuditRecord, UnattendedAccount
from rpa_common.secrets import unattended_password
from rpa_common.security import Encryptor
from rpa_common.service import ServiceContext
from tests.api.test_robots import create_robot
from tests.conftest import Tenant

SERVERS = "/api/v1/terminal-servers"
PASSWORD = "S3cret-Pa55word!"


async def create_server(client: httpx.AsyncClient, tenant: Tenant, **body: Any) -> dict[str, Any]:
    body.setdefault("name", f"ts-{uuid.uuid4().hex[:8]}")
    r = await client.post(SERVERS, json=body, headers=tenant.headers)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


async def test_server_crud_and_coordinator_rules(client: httpx.AsyncClient, tenant: Tenant) -> None:
    coord = await create_robot(client, tenant, role="coordinator")
    attended = await create_robot(client, tenant, role="attended")
    server = await create_server(
        client, tenant, name="ts-01", hostname="ts01.corp", coordinator_id=coord["id"], max_sessions=4
    )
    assert (server["coordinator_id"], server["max_sessions"], server["accounts"]) == (coord["id"], 4, [])

    # A robot of another role: 409, its role is its current state (a PATCH may change it).
    r = await client.post(
        SERVERS, json={"name": "x", "coordinator_id": attended["id"]}, headers=tenant.headers
    )
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "coordinator_id", r.text
    r = await client.post(SERVERS, json={"name": "x", "max_sessions": 0}, headers=tenant.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "max_sessions", r.text
    r = await client.post(
        SERVERS, json={"name": "x", "coordinator_id": str(uuid.uuid4())}, headers=tenant.headers
    )
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "coordinator_id", r.text
    r = await client.post(SERVERS, json={"name": "ts-01"}, headers=tenant.headers)
    assert r.status_code == 409

    r = await client.patch(
        f"{SERVERS}/{server['id']}", json={"max_sessions": 8, "description": "d"}, headers=tenant.headers
    )
    assert r.status_code == 200 and r.json()["max_sessions"] == 8
    r = await client.patch(
        f"{SERVERS}/{server['id']}", json={"coordinator_id": attended["id"]}, headers=tenant.headers
    )
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "coordinator_id"
    # A coordinator still serving a server keeps its role.
    r = await client.patch(f"/api/v1/robots/{coord['id']}", json={"role": "attended"}, headers=tenant.headers)
    assert r.status_code == 409

    listing = (await client.get(SERVERS, headers=tenant.headers)).json()
    assert [s["name"] for s in listing["items"]] == ["ts-01"]
    assert (await client.delete(f"{SERVERS}/{server['id']}", headers=tenant.headers)).status_code == 204
    assert (await client.get(f"{SERVERS}/{server['id']}", headers=tenant.headers)).status_code == 404


async def test_password_is_write_only_and_encrypted(
    client: httpx.AsyncClient, ctx: ServiceContext, tenant: Tenant
) -> None:
    robot = await create_robot(client, tenant, role="unattended")
    server = await create_server(client, tenant)
    url = f"{SERVERS}/{server['id']}/accounts"
    r = await client.post(
        url,
        json={"login": "svc-bot", "domain": "CORP", "password": PASSWORD, "robot_id": robot["id"]},
        headers=tenant.headers,
    )
    assert r.status_code == 201, r.text
    ua = r.json()
    assert ua["has_password"] is True and "password" not in ua and PASSWORD not in r.text
    assert (ua["login"], ua["domain"], ua["robot_id"]) == ("svc-bot", "CORP", robot["id"])

    responses = [
        await client.get(url, headers=tenant.headers),
        await client.get(f"{url}/{ua['id']}", headers=tenant.headers),
        await client.get(f"{SERVERS}/{server['id']}", headers=tenant.headers),
        await client.patch(f"{url}/{ua['id']}", json={"domain": "CORP2"}, headers=tenant.headers),
    ]
    for resp in responses:
        assert resp.status_code == 200, resp.text
        assert PASSWORD not in resp.text
    assert responses[2].json()["accounts"][0]["has_password"] is True

    async with ctx.sessions() as s:
        row = await s.get(UnattendedAccount, uuid.UUID(ua["id"]))
        assert row is not None and row.password_encrypted is not None
        assert PASSWORD.encode() not in row.password_encrypted
        enc = Encryptor.from_settings(ctx.settings)
        assert enc.decrypt(row.password_encrypted, context=str(tenant.account_id)) == PASSWORD
        assert unattended_password(ctx.settings, row) == PASSWORD

    # A new password replaces it; null removes it.
    new = "another-Secret-42"
    r = await client.patch(f"{url}/{ua['id']}", json={"password": new}, headers=tenant.headers)
    assert r.status_code == 200 and new not in r.text and r.json()["has_password"] is True
    async with ctx.sessions() as s:
        row = await s.get(UnattendedAccount, uuid.UUID(ua["id"]))
        assert row is not None and unattended_password(ctx.settings, row) == new
    r = await client.patch(f"{url}/{ua['id']}", json={"password": None}, headers=tenant.headers)
    assert r.json()["has_password"] is False

    async with ctx.sessions() as s:
        audits = (
            (await s.execute(sa.select(AuditRecord).where(AuditRecord.account_id == tenant.account_id)))
            .scalars()
            .all()
        )
    assert any(a.object_type == "unattended_account" for a in audits)
    for a in audits:
        assert PASSWORD not in str(a.changes) and new not in str(a.changes)


async def test_account_robot_binding_rules(client: httpx.AsyncClient, tenant: Tenant) -> None:
    unattended = await create_robot(client, tenant, role="unattended")
    attended = await create_robot(client, tenant, role="attended")
    server = await create_server(client, tenant)
    url = f"{SERVERS}/{server['id']}/accounts"
    first = await client.post(url, json={"login": "a1", "robot_id": unattended["id"]}, headers=tenant.headers)
    assert first.status_code == 201 and first.json()["has_password"] is False

    r = await client.post(url, json={"login": "a2", "robot_id": unattended["id"]}, headers=tenant.headers)
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "robot_id"
    r = await client.post(url, json={"login": "a2", "robot_id": attended["id"]}, headers=tenant.headers)
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "robot_id"
    r = await client.post(url, json={"login": "a1"}, headers=tenant.headers)
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "login"
    r = await client.post(url, json={"login": "a3", "pasword": "typo"}, headers=tenant.headers)
    assert r.status_code == 422
    listing = (await client.get(url, headers=tenant.headers)).json()
    assert [a["login"] for a in listing["items"]] == ["a1"]  # nothing half-written

    # The robot bound to an account stays unattended.
    r = await client.patch(
        f"/api/v1/robots/{unattended['id']}", json={"role": "attended"}, headers=tenant.headers
    )
    assert r.status_code == 409
    # Unbinding frees the robot for another account.
    r = await client.patch(f"{url}/{first.json()['id']}", json={"robot_id": None}, headers=tenant.headers)
    assert r.status_code == 200 and r.json()["robot_id"] is None
    r = await client.post(url, json={"login": "a2", "robot_id": unattended["id"]}, headers=tenant.headers)
    assert r.status_code == 201
    assert (await client.delete(f"{url}/{r.json()['id']}", headers=tenant.headers)).status_code == 204
    assert (await client.get(f"{url}/{r.json()['id']}", headers=tenant.headers)).status_code == 404


async def test_another_accounts_server_is_404(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = await create_server(client, other_tenant)
    their_coord = await create_robot(client, other_tenant, role="coordinator")
    their_robot = await create_robot(client, other_tenant, role="unattended")
    r = await client.post(
        f"{SERVERS}/{theirs['id']}/accounts",
        json={"login": "x", "password": PASSWORD},
        headers=other_tenant.headers,
    )
    their_ua = r.json()
    for method, url in (
        ("GET", f"{SERVERS}/{theirs['id']}"),
        ("DELETE", f"{SERVERS}/{theirs['id']}"),
        ("GET", f"{SERVERS}/{theirs['id']}/accounts"),
        ("POST", f"{SERVERS}/{theirs['id']}/accounts"),
        ("GET", f"{SERVERS}/{theirs['id']}/accounts/{their_ua['id']}"),
        ("DELETE", f"{SERVERS}/{theirs['id']}/accounts/{their_ua['id']}"),
    ):
        r = await client.request(
            method, url, json={"login": "y"} if method == "POST" else None, headers=tenant.headers
        )
        assert r.status_code == 404, (method, url, r.text)
    # Another account's robots cannot be used as coordinator or bound robot.
    r = await client.post(
        SERVERS, json={"name": "mine", "coordinator_id": their_coord["id"]}, headers=tenant.headers
    )
    assert r.status_code == 404
    mine = await create_server(client, tenant)
    r = await client.post(
        f"{SERVERS}/{mine['id']}/accounts",
        json={"login": "z", "robot_id": their_robot["id"]},
        headers=tenant.headers,
    )
    assert r.status_code == 404


async def test_permissions(client: httpx.AsyncClient, tenant: Tenant) -> None:
    server = await create_server(client, tenant)
    _, _, viewer = await tenant.user("Viewer")
    _, _, developer = await tenant.user("Developer")
    assert (await client.get(f"{SERVERS}/{server['id']}", headers=viewer)).status_code == 200
    assert (await client.post(SERVERS, json={"name": "v"}, headers=developer)).status_code == 403
    r = await client.post(f"{SERVERS}/{server['id']}/accounts", json={"login": "v"}, headers=viewer)
    assert r.status_code == 403


async def test_rdp_settings_of_a_server_are_checked_and_patched(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    from rpa_common.sealing import SealKeyPair

    public = SealKeyPair.generate().public
    fingerprint = "SHA256:" + ":".join(["AB"] * 32)
    server = await create_server(
        client, tenant, hostname="ts02.corp", rdp_port=3390, cert_fingerprint=fingerprint, public_key=public
    )
    assert (server["rdp_port"], server["cert_fingerprint"], server["cert_ignore"]) == (
        3390,
        fingerprint.lower(),
        False,
    )
    assert (server["shell_mode"], server["shell_command"], server["public_key"]) == ("command", None, public)
    for field, value in (
        ("cert_fingerprint", "ab:cd"),  # no hash name
        ("cert_fingerprint", "sha256:zz:11"),
        ("public_key", "not-a-key"),
        ("rdp_port", 0),
        ("shell_mode", "desktop"),
        ("shell_command", "robot\n--evil"),
    ):
        r = await client.post(SERVERS, json={"name": f"x-{field}", field: value}, headers=tenant.headers)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == field, (field, r.text)
    r = await client.patch(
        f"{SERVERS}/{server['id']}",
        json={"shell_mode": "startup", "cert_fingerprint": None, "cert_ignore": True},
        headers=tenant.headers,
    )
    assert r.status_code == 200, r.text
    assert (r.json()["shell_mode"], r.json()["cert_fingerprint"], r.json()["cert_ignore"]) == (
        "startup",
        None,
        True,
    )
    r = await client.patch(f"{SERVERS}/{server['id']}", json={"cert_ignore": None}, headers=tenant.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "cert_ignore"
