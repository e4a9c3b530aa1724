"""Webhook subscription endpoints: CRUD, secret rotation, pause/resume, a test ping, the delivery log.

The scheduler does the sending (``rpa_scheduler.webhooks``); these endpoints only change rows. The
secret is in the answer of creation and rotation only.
"""

from __future__ import annotations

import uuid
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Ctx, Principal, Transaction, require
from rpa_api.kit.pagination import Page, Paging
from rpa_api.openapi import errors
from rpa_api.webhooks import schemas, service
from rpa_common.models import WebhookDelivery, WebhookSubscription
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O

router = APIRouter()

Reader = Annotated[Principal, Depends(require(O.WEBHOOKS, A.READ))]
Creator = Annotated[Principal, Depends(require(O.WEBHOOKS, A.CREATE))]
Updater = Annotated[Principal, Depends(require(O.WEBHOOKS, A.UPDATE))]
Deleter = Annotated[Principal, Depends(require(O.WEBHOOKS, A.DELETE))]

_BASE = "/webhooks"


@router.post(
    _BASE,
    status_code=201,
    summary="Subscribe a URL to events (the secret is in this answer only)",
    responses=errors(s404="The folder does not exist in your account"),
)
async def create_webhook(
    body: schemas.SubscriptionCreate, ctx: Ctx, tx: Transaction, principal: Creator
) -> schemas.SubscriptionCreated:
    async def work(session: AsyncSession) -> schemas.SubscriptionCreated:
        made = await service.create_subscription(session, ctx.settings, principal, body)
        out = schemas.SubscriptionOut.model_validate(made.subscription).model_dump()
        return schemas.SubscriptionCreated(**out, secret=made.secret)

    return await tx.run(work)


@router.get(_BASE, summary="List webhook subscriptions")
async def list_webhooks(tx: Transaction, paging: Paging, principal: Reader) -> Page[schemas.SubscriptionOut]:
    async def work(session: AsyncSession) -> Page[schemas.SubscriptionOut]:
        stmt = service.subscriptions_query(principal)
        total = await session.scalar(sa.select(sa.func.count()).select_from(stmt.subquery()))
        rows = (
            await session.scalars(
                stmt.order_by(WebhookSubscription.created_at, WebhookSubscription.id)
                .limit(paging.limit)
                .offset(paging.offset)
            )
        ).all()
        return Page[schemas.SubscriptionOut](
            items=[schemas.SubscriptionOut.model_validate(r) for r in rows],
            total=int(total or 0),
            limit=paging.limit,
            offset=paging.offset,
        )

    return await tx.read(work)


@router.get(f"{_BASE}/{{subscription_id:uuid}}", summary="A webhook subscription")
async def get_webhook(
    subscription_id: uuid.UUID, tx: Transaction, principal: Reader
) -> schemas.SubscriptionOut:
    async def work(session: AsyncSession) -> schemas.SubscriptionOut:
        sub = await service.get_subscription(session, principal, subscription_id)
        return schemas.SubscriptionOut.model_validate(sub)

    return await tx.read(work)


@router.patch(f"{_BASE}/{{subscription_id:uuid}}", summary="Change a webhook subscription")
async def update_webhook(
    subscription_id: uuid.UUID, body: schemas.SubscriptionUpdate, tx: Transaction, principal: Updater
) -> schemas.SubscriptionOut:
    async def work(session: AsyncSession) -> schemas.SubscriptionOut:
        sub = await service.update_subscription(session, principal, subscription_id, body)
        return schemas.SubscriptionOut.model_validate(sub)

    return await tx.run(work)


@router.delete(
    f"{_BASE}/{{subscription_id:uuid}}",
    status_code=204,
    summary="Delete a webhook subscription and its delivery log",
)
async def delete_webhook(subscription_id: uuid.UUID, tx: Transaction, principal: Deleter) -> Response:
    await tx.run(lambda session: service.delete_subscription(session, principal, subscription_id))
    return Response(status_code=204)


@router.post(
    f"{_BASE}/{{subscription_id:uuid}}/secret",
    summary="A new signing secret (the old one stops at once); shown only in this answer",
)
async def rotate_webhook_secret(
    subscription_id: uuid.UUID, ctx: Ctx, tx: Transaction, principal: Updater
) -> schemas.SecretRotated:
    secret = await tx.run(
        lambda session: service.rotate_secret(session, ctx.settings, principal, subscription_id)
    )
    return schemas.SecretRotated(id=subscription_id, secret=secret)


@router.post(
    f"{_BASE}/{{subscription_id:uuid}}/pause",
    summary="Stop sending (events still queue up as pending deliveries)",
)
async def pause_webhook(
    subscription_id: uuid.UUID, tx: Transaction, principal: Updater
) -> schemas.SubscriptionOut:
    async def work(session: AsyncSession) -> schemas.SubscriptionOut:
        return schemas.SubscriptionOut.model_validate(
            await service.pause(session, principal, subscription_id)
        )

    return await tx.run(work)


@router.post(
    f"{_BASE}/{{subscription_id:uuid}}/resume",
    summary="Send again, starting with every delivery that waited (oldest event first)",
)
async def resume_webhook(
    subscription_id: uuid.UUID, tx: Transaction, principal: Updater
) -> schemas.SubscriptionOut:
    async def work(session: AsyncSession) -> schemas.SubscriptionOut:
        return schemas.SubscriptionOut.model_validate(
            await service.resume(session, principal, subscription_id)
        )

    return await tx.run(work)


@router.post(
    f"{_BASE}/{{subscription_id:uuid}}/ping",
    summary="POST a signed test event (type `ping`, id 0) to the URL now and say what it answered",
)
async def ping_webhook(
    subscription_id: uuid.UUID, ctx: Ctx, tx: Transaction, principal: Updater
) -> schemas.PingResult:
    async def work(session: AsyncSession) -> tuple[uuid.UUID, str, bytes]:
        sub = await service.get_subscription(session, principal, subscription_id)
        return sub.account_id, sub.url, await service.secret_of(session, ctx.settings, sub)

    account_id, url, secret = await tx.read(work)
    result = await service.send_ping(ctx.settings, subscription_id, account_id, url, secret)
    changes = {"ok": result.ok, "status_code": result.status_code, "error": result.error}
    await tx.run(lambda session: service.record_ping(session, principal, subscription_id, changes))
    return result


@router.get(
    f"{_BASE}/{{subscription_id:uuid}}/deliveries",
    summary="A subscription's deliveries, newest event first",
)
async def list_webhook_deliveries(
    subscription_id: uuid.UUID,
    tx: Transaction,
    paging: Paging,
    principal: Reader,
    state: Annotated[str | None, Query(pattern="^(pending|delivered|failed)$")] = None,
) -> Page[schemas.DeliveryOut]:
    async def work(session: AsyncSession) -> Page[schemas.DeliveryOut]:
        sub = await service.get_subscription(session, principal, subscription_id)
        where = [WebhookDelivery.subscription_id == sub.id]
        if state is not None:
            where.append(WebhookDelivery.state == state)
        total = await session.scalar(sa.select(sa.func.count()).select_from(WebhookDelivery).where(*where))
        rows = (
            await session.scalars(
                sa.select(WebhookDelivery)
                .where(*where)
                .order_by(WebhookDelivery.event_id.desc())
                .limit(paging.limit)
                .offset(paging.offset)
            )
        ).all()
        return Page[schemas.DeliveryOut](
            items=[schemas.DeliveryOut.model_validate(r) for r in rows],
            total=int(total or 0),
            limit=paging.limit,
            offset=paging.offset,
        )

    return await tx.read(work)
