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
