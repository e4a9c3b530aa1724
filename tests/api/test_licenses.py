"""Licenses: install a signed key, list seats (capacity, assigned, in use, expiry), remove; the
keys are issued in the test with the session's fresh issuer key pair (``tests.license_keys``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import AuditRecord, Robot
from rpa_common.models.enums import LicenseKind, RobotStatus
from rpa_common.service import ServiceContext
from tests.api.test_robots import create_robot
from tests.conftest import Tenant
from tests.license_keys import issue_key

LICENSES = "/api/v1/licenses"


async def install(client: httpx.AsyncClient, tenant: Tenant, key: str, **body: Any) -> dict[str, Any]:
    r = await client.post(LICENSES, json={"key": key, **body}, headers=tenant.headers)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


async def test_install_list_and_seats(client: httpx.AsyncClient, tenant: Tenant, ctx: ServiceContext) -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    lic = await install(client, tenant, issue_key(LicenseKind.UNATTENDED, 3, expires, licensee="ACME"))
    assert lic["name"] == "ACME Unattended" and lic["licensee"] == "ACME"
    assert lic["kind"] == "Unattended" and lic["capacity"] == 3 and lic["expired"] is False
    assert datetime.fromisoformat(lic["expires_at"]) == expires
    floating = await install(client, tenant, issue_key(LicenseKind.ATTENDED_FLOATING, 2), name="desk")
    assert floating["name"] == "desk" and floating["expires_at"] is None

    robots = [await create_robot(client, tenant, role="unattended") for _ in range(2)]
    await create_robot(client, tenant, role="attended")

    async def connect(session: Any) -> None:
        await session.execute(
            sa.update(Robot).where(Robot.id == robots[0]["id"]).values(status=RobotStatus.READY)
        )

    await run_in_transaction(ctx.sessions, connect)
    items = {x["id"]: x for x in (await client.get(LICENSES, headers=tenant.headers)).json()["items"]}
    assert set(items) == {lic["id"], floating["id"]}
    assert (items[lic["id"]]["assigned"], items[lic["id"]]["in_use"]) == (2, 1)
    assert (items[floating["id"]]["assigned"], items[floating["id"]]["in_use"]) == (1, 0)
    one = (await client.get(f"{LICENSES}/{lic['id']}", headers=tenant.headers)).json()
    assert one["in_use"] == 1

    async def audits(session: Any) -> list[str]:
        rows = await session.execute(
            sa.select(AuditRecord.action).where(
                AuditRecord.account_id == tenant.account_id, AuditRecord.object_type == "license"
            )
        )
        return [r[0] for r in rows]

    assert sorted(await run_in_transaction(ctx.sessions, audits)) == ["install", "install"]
    r = await client.delete(f"{LICENSES}/{lic['id']}", headers=tenant.headers)
    assert r.status_code == 204
    assert (await client.get(f"{LICENSES}/{lic['id']}", headers=tenant.headers)).status_code == 404
    assert "delete" in await run_in_transaction(ctx.sessions, audits)


async def test_expired_license_is_listed_as_expired(client: httpx.AsyncClient, tenant: Tenant) -> None:
    lic = await install(client, tenant, issue_key(expires_at=datetime.now(UTC) - timedelta(minutes=1)))
    assert lic["expired"] is True
    listed = (await client.get(LICENSES, headers=tenant.headers)).json()["items"]
    assert [x["expired"] for x in listed] == [True]


async def test_bad_keys_are_422_naming_the_key(client: httpx.AsyncClient, tenant: Tenant) -> None:
    good = issue_key()
    payload = good.split(".")[1]
    forged = issue_key(signer=Ed25519PrivateKey.generate())
    tampered = good.replace(payload, payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB"))
    for key, words in (
        ("hello", "not a license key"),
        ("RPA1.%%%.***", "key"),
        (forged, "signature"),
        (tampered, ""),
    ):
        r = await client.post(LICENSES, json={"key": key}, headers=tenant.headers)
        assert r.status_code == 422, (key, r.text)
        problem = r.json()
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "key" in str(problem), problem
        assert words in problem["detail"], problem
    r = await client.post(LICENSES, json={}, headers=tenant.headers)
    assert r.status_code == 422 and "key" in r.text
    assert (await client.get(LICENSES, headers=tenant.headers)).json()["items"] == []


async def test_duplicate_key_is_409_also_in_another_account(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    key = issue_key()
    await install(client, tenant, key)
    for who in (tenant, other_tenant):
        r = await client.post(LICENSES, json={"key": key}, headers=who.headers)
        assert r.status_code == 409, r.text


async def test_isolation_and_permissions(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    lic = await install(client, tenant, issue_key())
    assert (await client.get(f"{LICENSES}/{lic['id']}", headers=other_tenant.headers)).status_code == 404
    assert (await client.delete(f"{LICENSES}/{lic['id']}", headers=other_tenant.headers)).status_code == 404
    assert (await client.get(LICENSES, headers=other_tenant.headers)).json()["items"] == []
    _, _, viewer = await tenant.user("Viewer")
    assert (await client.get(LICENSES, headers=viewer)).status_code == 200
    assert (await client.post(LICENSES, json={"key": issue_key()}, headers=viewer)).status_code == 403
    assert (await client.delete(f"{LICENSES}/{lic['id']}", headers=viewer)).status_code == 403
