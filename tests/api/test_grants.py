"""Cached grants never outlive a change: on the replica that made it, and on the others via NATS."""

from __future__ import annotations

import asyncio

import httpx

from rpa_common.service import ServiceContext
from tests.conftest import Tenant


async def test_role_change_reaches_every_replica_at_once(ctx: ServiceContext, tenant: Tenant) -> None:
    from rpa_api.app import create_app

    # Two API replicas: each has its own grant cache; they share the database and NATS.
    other_replica = create_app(ctx=ctx)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=other_replica), base_url="http://b") as b:
        user_id, _, headers = await tenant.user("Viewer")
        body = {"name": "r1", "role": "attended"}
        # Both replicas learn (and cache) that this user is a Viewer.
        assert (await tenant.client.post("/api/v1/robots", json=body, headers=headers)).status_code == 403
        assert (await b.post("/api/v1/robots", json=body, headers=headers)).status_code == 403

        roles = (await tenant.client.get("/api/v1/roles?limit=100", headers=tenant.headers)).json()["items"]
        admin_role = next(r["id"] for r in roles if r["name"] == "Administrator")
        r = await tenant.client.put(
            f"/api/v1/users/{user_id}/roles", json={"role_ids": [admin_role]}, headers=tenant.headers
        )
        assert r.status_code == 200, r.text

        # The replica that made the change knows at once.
        assert (await tenant.client.post("/api/v1/robots", json=body, headers=headers)).status_code == 201
        # The other one hears it on NATS within moments, well before its cache would expire.
        deadline = asyncio.get_running_loop().time() + 2
        while True:
            r = await b.post("/api/v1/robots", json={**body, "name": "r2"}, headers=headers)
            if r.status_code == 201:
                break
            assert r.status_code == 403
            assert asyncio.get_running_loop().time() < deadline, "the other replica kept the stale grant"
            await asyncio.sleep(0.02)


async def test_disabling_a_user_locks_them_out_at_once(ctx: ServiceContext, tenant: Tenant) -> None:
    user_id, _, headers = await tenant.user("Operator")
    assert (await tenant.client.get("/api/v1/auth/me", headers=headers)).status_code == 200  # cached now
    r = await tenant.client.patch(
        f"/api/v1/users/{user_id}", json={"is_active": False}, headers=tenant.headers
    )
    assert r.status_code == 200, r.text
    assert (await tenant.client.get("/api/v1/auth/me", headers=headers)).status_code == 401


async def test_signing_in_keeps_the_accounts_grants_and_a_role_change_drops_them(
    ctx: ServiceContext, tenant: Tenant
) -> None:
    """A login (right or wrong password) hands out or refuses a token and changes nothing a grant
    holds: it must not empty every replica's cache. A change of roles must."""
    from rpa_common.nats.messages import AuthChanged
    from rpa_common.nats.subjects import AUTH_CHANGED
    from tests.conftest import PASSWORD

    heard: list[str] = []

    async def on_change(msg) -> None:  # type: ignore[no-untyped-def]
        if AuthChanged.decode(msg.data).account_id == tenant.account_id:
            heard.append("changed")

    sub = await ctx.nc.subscribe(AUTH_CHANGED, cb=on_change)
    try:
        user_id, username, _ = await tenant.user("Viewer")
        await ctx.nc.flush()
        heard.clear()
        ok = await tenant.client.post("/api/v1/auth/token", data={"username": username, "password": PASSWORD})
        assert ok.status_code == 200, ok.text
        bad = await tenant.client.post("/api/v1/auth/token", data={"username": username, "password": "nope"})
        assert bad.status_code in (400, 401), bad.text
        await ctx.nc.flush()
        await asyncio.sleep(0.3)
        assert heard == [], "a login dropped the account's cached grants"

        roles = (await tenant.client.get("/api/v1/roles?limit=100", headers=tenant.headers)).json()["items"]
        operator = next(r["id"] for r in roles if r["name"] == "Operator")
        r = await tenant.client.put(
            f"/api/v1/users/{user_id}/roles", json={"role_ids": [operator]}, headers=tenant.headers
        )
        assert r.status_code == 200, r.text
        deadline = asyncio.get_running_loop().time() + 2
        while not heard:
            assert asyncio.get_running_loop().time() < deadline, "a role change did not drop the grants"
            await asyncio.sleep(0.02)
    finally:
        await sub.unsubscribe()
