"""Webhook subscriptions: rules and queries. Runs inside the request's unit of work, only flushes.

A subscription is scoped to the caller's account and folders (its folder filter is the folder the
caller must see). Pause and resume are audited; resuming makes every pending delivery due at once,
so the scheduler sends what was missed, oldest event first.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal
from rpa_api.kit.audit import record
from rpa_api.kit.folders import check_folder
from rpa_api.kit.lookup import get_owned
from rpa_api.kit.patch import apply_patch, require_not_null
from rpa_api.webhooks import schemas
from rpa_common import webhooks
from rpa_common.events import Event
from rpa_common.models import WebhookDelivery, WebhookSubscription
from rpa_common.models.base import utcnow
from rpa_common.settings import Settings


def subscriptions_query(principal: Principal) -> sa.Select[WebhookSubscription]:
    return sa.select(WebhookSubscription).where(
        WebhookSubscription.account_id == principal.account_id,
        principal.folder_clause(WebhookSubscription.folder_id),
    )


async def get_subscription(
    session: AsyncSession, principal: Principal, subscription_id: uuid.UUID, *, lock: bool = False
) -> WebhookSubscription:
    stmt = subscriptions_query(principal).where(WebhookSubscription.id == subscription_id)
    return await get_owned(session, stmt, "webhook subscription", subscription_id, lock=lock)


@dataclass
class Created:
    subscription: WebhookSubscription
    secret: str


async def create_subscription(
    session: AsyncSession, settings: Settings, principal: Principal, body: schemas.SubscriptionCreate
) -> Created:
    if body.folder_id is not None:
        await check_folder(session, principal, body.folder_id)
    sub_id = uuid.uuid4()
    secret = webhooks.new_secret()
    wrapped, key_id = await webhooks.seal(session, settings, principal.account_id, sub_id, secret)
    sub = WebhookSubscription(
        id=sub_id,
        account_id=principal.account_id,
        folder_id=body.folder_id,
        url=body.url,
        description=body.description,
        event_types=body.event_types,
        enabled=body.enabled,
        state="active",
        consecutive_failures=0,
        secret_wrapped=wrapped,
        secret_key_id=key_id,
    )
    session.add(sub)
    await session.flush()
    changes = body.model_dump(mode="json")
    record(session, principal, "create", "webhook_subscription", sub_id, changes)
    return Created(sub, secret)


async def update_subscription(
    session: AsyncSession, principal: Principal, subscription_id: uuid.UUID, body: schemas.SubscriptionUpdate
) -> WebhookSubscription:
    sub = await get_subscription(session, principal, subscription_id, lock=True)
    fields = body.model_dump(exclude_unset=True)
    require_not_null(fields, *body.not_null)
    if fields.get("folder_id") is not None:
        await check_folder(session, principal, fields["folder_id"])
    changes = apply_patch(sub, fields)
    if changes:
        sub.updated_at = utcnow()
        await session.flush()
        record(session, principal, "update", "webhook_subscription", sub.id, changes)
    return sub


async def delete_subscription(
    session: AsyncSession, principal: Principal, subscription_id: uuid.UUID
) -> None:
    sub = await get_subscription(session, principal, subscription_id, lock=True)
    await session.execute(sa.delete(WebhookDelivery).where(WebhookDelivery.subscription_id == sub.id))
    await session.delete(sub)
    await session.flush()
    record(session, principal, "delete", "webhook_subscription", subscription_id, {"url": sub.url})


async def rotate_secret(
    session: AsyncSession, settings: Settings, principal: Principal, subscription_id: uuid.UUID
) -> str:
    sub = await get_subscription(session, principal, subscription_id, lock=True)
    secret = webhooks.new_secret()
    sub.secret_wrapped, sub.secret_key_id = await webhooks.seal(
        session, settings, sub.account_id, sub.id, secret
    )
    sub.updated_at = utcnow()
    await session.flush()
    record(session, principal, "rotate_secret", "webhook_subscription", sub.id, {"secret": "rotated"})
    return secret


async def pause(
    session: AsyncSession, principal: Principal, subscription_id: uuid.UUID
) -> WebhookSubscription:
    sub = await get_subscription(session, principal, subscription_id, lock=True)
    if sub.state != "paused":
        sub.state, sub.paused_at, sub.paused_reason = "paused", utcnow(), "paused by a person"
        sub.updated_at = utcnow()
        await session.flush()
        record(session, principal, "pause", "webhook_subscription", sub.id, {"state": "paused"})
    return sub


async def resume(
    session: AsyncSession, principal: Principal, subscription_id: uuid.UUID
) -> WebhookSubscription:
    sub = await get_subscription(session, principal, subscription_id, lock=True)
    if sub.state != "active":
        was = sub.paused_reason
        now = utcnow()
        sub.state, sub.paused_at, sub.paused_reason = "active", None, None
        sub.consecutive_failures, sub.failing_since, sub.updated_at = 0, None, now
        # What waited while paused is due now, in event order (the scheduler keeps the order).
        await session.execute(
            sa.update(WebhookDelivery)
            .where(WebhookDelivery.subscription_id == sub.id, WebhookDelivery.state == "pending")
            .values(next_attempt_at=now)
        )
        await session.flush()
        record(session, principal, "resume", "webhook_subscription", sub.id, {"state": "active", "was": was})
    return sub


async def record_ping(
    session: AsyncSession, principal: Principal, subscription_id: uuid.UUID, changes: dict[str, Any]
) -> None:
    record(session, principal, "ping", "webhook_subscription", subscription_id, changes)


async def secret_of(session: AsyncSession, settings: Settings, sub: WebhookSubscription) -> bytes:
    return await webhooks.unseal(
        session, settings, sub.account_id, sub.id, sub.secret_wrapped, sub.secret_key_id
    )


async def send_ping(
    settings: Settings, sub_id: uuid.UUID, account_id: uuid.UUID, url: str, secret: bytes
) -> schemas.PingResult:
    """One signed ``ping`` (event id 0) to the URL, outside any transaction; nothing is stored."""
    event = Event(id=0, type="ping", account_id=account_id, object_id=sub_id, at=utcnow())
    body = event.model_dump_json().encode()
    headers = {
        "Content-Type": "application/json",
        webhooks.SIGNATURE_HEADER: webhooks.sign(secret, body),
        webhooks.EVENT_ID_HEADER: "0",
        webhooks.EVENT_TYPE_HEADER: "ping",
    }
    started = time.monotonic()
    timeout = httpx.Timeout(settings.webhook_timeout_s, connect=settings.webhook_connect_timeout_s)
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http:
            response = await http.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        elapsed = int((time.monotonic() - started) * 1000)
        return schemas.PingResult(ok=False, status_code=None, error=type(exc).__name__, duration_ms=elapsed)
    elapsed = int((time.monotonic() - started) * 1000)
    ok = 200 <= response.status_code < 300
    return schemas.PingResult(ok=ok, status_code=response.status_code, error=None, duration_ms=elapsed)
