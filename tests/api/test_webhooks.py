"""Webhook subscriptions through the API: the secret shown once and never listed, event types
checked (422 naming the field), folder and account scoping, pause/resume, rotation, the test ping
to a real receiver that checks the signature, and the permission."""

from __future__ import annotations

import uuid

import httpx
import sqlalchemy as sa

from rpa_common.models import AuditRecord, WebhookSubscription
from tests.conftest import Tenant
from tests.webhook_receiver import receiving

API = "/api/v1"


async def _create(client: httpx.AsyncClient, tenant: Tenant, **body: object) -> httpx.Response:
    body.setdefault("url", "https://hooks.example.com/rpa")
    body.setdefault("event_types", ["job.state"])
    return await client.post(f"{API}/webhooks", json=body, headers=tenant.headers)


async def test_secret_is_shown_once_and_stored_wrapped(client: httpx.AsyncClient, tenant: Tenant) -> None:
    resp = await _create(client, tenant, event_types=["robot.status", "job.state", "job.state"])
    assert resp.status_code == 201, resp.text
    created = resp.json()
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert created["event_types"] == ["job.state", "robot.status"]
    assert created["state"] == "active" and created["enabled"] is True

    listed = await client.get(f"{API}/webhooks", headers=tenant.headers)
    one = await client.get(f"{API}/webhooks/{created['id']}", headers=tenant.headers)
    assert listed.status_code == 200 and one.status_code == 200
    assert [i["id"] for i in listed.json()["items"]] == [created["id"]]
    assert secret not in listed.text and secret not in one.text and "secret" not in one.json()

    async with tenant.ctx.sessions() as session:
        sub = await session.get(WebhookSubscription, uuid.UUID(created["id"]))
        audit = (
            await session.scalars(sa.select(AuditRecord).where(AuditRecord.object_id == created["id"]))
        ).all()
    assert sub is not None and secret.encode() not in sub.secret_wrapped
    assert audit and all(secret not in str(a.changes) for a in audit)

    rotated = await client.post(f"{API}/webhooks/{created['id']}/secret", headers=tenant.headers)
    assert rotated.status_code == 200
    assert rotated.json()["secret"].startswith("whsec_") and rotated.json()["secret"] != secret


async def test_unknown_event_type_is_a_422_naming_the_field(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    resp = await _create(client, tenant, event_types=["job.state", "job.exploded"])
    assert resp.status_code == 422
    assert "event_types" in resp.text and "job.exploded" in resp.text
    empty = await _create(client, tenant, event_types=[])
    assert empty.status_code == 422 and "event_types" in empty.text
    bad_url = await _create(client, tenant, url="file:///etc/passwd")
    assert bad_url.status_code == 422 and "url" in bad_url.text
    created = (await _create(client, tenant)).json()
    patch = await client.patch(
        f"{API}/webhooks/{created['id']}", json={"event_types": ["nope"]}, headers=tenant.headers
    )
    assert patch.status_code == 422 and "event_types" in patch.text


async def test_other_accounts_subscription_is_a_404(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    created = (await _create(client, tenant)).json()
    for method, suffix in (("GET", ""), ("PATCH", ""), ("POST", "/pause"), ("GET", "/deliveries")):
        kw = {"json": {"description": "x"}} if method == "PATCH" else {}
        resp = await client.request(
            method, f"{API}/webhooks/{created['id']}{suffix}", headers=other_tenant.headers, **kw
        )
        assert resp.status_code == 404, (method, suffix, resp.text)
    assert (await client.get(f"{API}/webhooks", headers=other_tenant.headers)).json()["total"] == 0


async def test_pause_and_resume_are_audited(client: httpx.AsyncClient, tenant: Tenant) -> None:
    created = (await _create(client, tenant)).json()
    paused = await client.post(f"{API}/webhooks/{created['id']}/pause", headers=tenant.headers)
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    resumed = await client.post(f"{API}/webhooks/{created['id']}/resume", headers=tenant.headers)
    assert resumed.status_code == 200 and resumed.json()["state"] == "active"
    async with tenant.ctx.sessions() as session:
        actions = (
            await session.scalars(sa.select(AuditRecord.action).where(AuditRecord.object_id == created["id"]))
        ).all()
    assert {"create", "pause", "resume"} <= set(actions)


async def test_ping_reaches_a_real_receiver_signed(client: httpx.AsyncClient, tenant: Tenant) -> None:
    async with receiving() as receiver:
        created = (await _create(client, tenant, url=receiver.url)).json()
        receiver.secret = created["secret"]
        resp = await client.post(f"{API}/webhooks/{created['id']}/ping", headers=tenant.headers)
        assert resp.status_code == 200, resp.text
        assert resp.json()["ok"] is True and resp.json()["status_code"] == 200
        [call] = receiver.calls
        assert call.signed and call.event_type == "ping"
        # A rotated secret signs from now on: the receiver holding the old one refuses it.
        await client.post(f"{API}/webhooks/{created['id']}/secret", headers=tenant.headers)
        again = await client.post(f"{API}/webhooks/{created['id']}/ping", headers=tenant.headers)
        assert again.json()["ok"] is False and again.json()["status_code"] == 401


async def test_ping_to_a_closed_port_says_why(client: httpx.AsyncClient, tenant: Tenant) -> None:
    created = (await _create(client, tenant, url="http://127.0.0.1:9/hook")).json()
    resp = await client.post(f"{API}/webhooks/{created['id']}/ping", headers=tenant.headers)
    assert resp.status_code == 200
    assert resp.json()["ok"] is False and resp.json()["status_code"] is None and resp.json()["error"]


async def test_a_viewer_cannot_read_or_create(client: httpx.AsyncClient, tenant: Tenant) -> None:
    _, _, headers = await tenant.user("Viewer")
    assert (await client.get(f"{API}/webhooks", headers=headers)).status_code == 403
    resp = await client.post(
        f"{API}/webhooks",
        json={"url": "https://x.example.com/h", "event_types": ["job.state"]},
        headers=headers,
    )
    assert resp.status_code == 403
