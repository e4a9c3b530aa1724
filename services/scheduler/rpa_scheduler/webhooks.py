"""Webhook deliveries: events from the stream to delivery rows, delivery rows to signed POSTs.

**Intake.** A durable JetStream pull consumer (``CONSUMER``) on the event stream, shared by every
replica (each event goes to one of them). For each event the subscriptions of its account that
are enabled, name its type and match its folder (or have no folder filter) get one delivery row,
unique on ``(subscription_id, event_id)``: an event delivered again (a replica died before its ack)
adds nothing. The message is acked after the commit.

**Sending.** Every replica runs a worker that claims due rows under ``FOR UPDATE SKIP LOCKED`` and
a lease (``claimed_until``, a token): two replicas never send the same row at once, and a row whose
sender died is sent again once its lease expired (at least once: receivers dedupe by event id).
Ordering per subscription: only the oldest pending event of a subscription can be claimed, so a
failing event holds back the later ones of that subscription (and only those), and what waited
(a pause, an outage) goes out in event order. With several replicas the intake itself runs in
parallel, so an event may be recorded just after a later one was already sent: the order is strict
among recorded events, not a global guarantee; a receiver that needs order uses the event id.

Network errors, 408, 429 and 5xx are retried with exponential backoff (``webhook_retry_base_s``
doubling, capped at ``webhook_retry_max_s``, with jitter; a ``Retry-After`` is honoured up to the
cap). Another 4xx marks the delivery failed. Each failure counts against the subscription: after
``webhook_pause_after_failures`` in a row, or failing for ``webhook_pause_after_s``, it is paused
(audited); its deliveries stay pending, and resuming it (API) sends them, oldest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
import structlog
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from rpa_common import events, webhooks
from rpa_common.aio import cancel_all, unsubscribe, wait_event
from rpa_common.audit import add_audit_record
from rpa_common.db.uow import run_in_transaction
from rpa_common.events import ALL_SUBJECTS, STREAM, Event
from rpa_common.models import WebhookDelivery, WebhookSubscription
from rpa_common.models.base import utcnow
from rpa_common.models.enums import ActorType
from rpa_common.service import ServiceContext

log = structlog.get_logger(__name__)

CONSUMER = events.WEBHOOK_CONSUMER
"""The durable consumer's name: one for all replicas."""
FETCH_BATCH = 100
LEASE_MARGIN_S = 5.0
"""Added to the send timeouts for the lease (at most the send timeout itself)."""


async def ensure_stream(js: JetStreamContext) -> None:
    """The event stream, created when absent (the producers create the same one)."""
    try:
        await js.stream_info(STREAM)
        return
    except NotFoundError:
        pass
    with contextlib.suppress(BadRequestError):  # created by someone else meanwhile
        await js.add_stream(name=STREAM, subjects=[ALL_SUBJECTS])


# Intake


def _matches(sub: WebhookSubscription, event: Event) -> bool:
    if event.type not in (sub.event_types or []):
        return False
    return sub.folder_id is None or sub.folder_id == event.folder_id


async def record_event(ctx: ServiceContext, event: Event) -> int:
    """Delivery rows for ``event`` (its ``id`` set); returns how many were added."""
    body = event.model_dump_json()

    async def work(session: AsyncSession) -> int:
        subs = (
            await session.scalars(
                sa.select(WebhookSubscription).where(
                    WebhookSubscription.account_id == event.account_id, WebhookSubscription.enabled.is_(True)
                )
            )
        ).all()
        wanted = [s.id for s in subs if _matches(s, event)]
        if not wanted:
            return 0
        have = set(
            (
                await session.scalars(
                    sa.select(WebhookDelivery.subscription_id).where(
                        WebhookDelivery.event_id == event.id, WebhookDelivery.subscription_id.in_(wanted)
                    )
                )
            ).all()
        )
        now = utcnow()
        added = 0
        for sub_id in wanted:
            if sub_id in have:
                continue
            session.add(
                WebhookDelivery(
                    id=uuid.uuid4(),
                    subscription_id=sub_id,
                    account_id=event.account_id,
                    event_id=event.id,
                    event_type=event.type,
                    body=body,
                    state="pending",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
            added += 1
        await session.flush()
        return added

    for attempt in range(3):
        try:
            return await run_in_transaction(ctx.sessions, work, attempts=ctx.settings.db_retry_attempts)
        except IntegrityError:
            # Another replica added the same rows meanwhile (a redelivery): look again.
            if attempt == 2:
                raise
    return 0


# Sending


@dataclass
class Claimed:
    id: uuid.UUID
    token: str
    subscription_id: uuid.UUID
    event_id: int
    event_type: str
    url: str
    body: str
    secret: bytes
    attempts: int


@dataclass
class Outcome:
    status_code: int | None = None
    error: str | None = None
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def retryable(self) -> bool:
        code = self.status_code
        return code is None or code in (408, 429) or code >= 500


async def claim(
    ctx: ServiceContext, *, limit: int | None = None, now: datetime | None = None
) -> list[Claimed]:
    """Due deliveries, one per subscription (its oldest pending event), leased to this worker."""
    settings = ctx.settings
    moment = now or utcnow()
    margin = min(LEASE_MARGIN_S, settings.webhook_timeout_s)
    lease = timedelta(seconds=settings.webhook_timeout_s + settings.webhook_connect_timeout_s + margin)
    token = uuid.uuid4().hex
    earlier = aliased(WebhookDelivery)
    active = sa.select(WebhookSubscription.id).where(
        WebhookSubscription.state == "active", WebhookSubscription.enabled.is_(True)
    )

    async def work(session: AsyncSession) -> list[Claimed]:
        d = WebhookDelivery
        ids = (
            await session.scalars(
                sa.select(d.id)
                .where(
                    d.state == "pending",
                    d.next_attempt_at <= moment,
                    sa.or_(d.claimed_until.is_(None), d.claimed_until < moment),
                    d.subscription_id.in_(active),
                    ~sa.exists().where(
                        earlier.subscription_id == d.subscription_id,
                        earlier.state == "pending",
                        earlier.event_id < d.event_id,
                    ),
                )
                .order_by(d.next_attempt_at)
                .limit(limit or settings.webhook_batch)
                .with_for_update(skip_locked=True)
            )
        ).all()
        if not ids:
            return []
        await session.execute(
            sa.update(d)
            .where(d.id.in_(ids))
            .values(
                claimed_until=moment + lease,
                claim_token=token,
                attempts=d.attempts + 1,
                last_attempt_at=moment,
            )
        )
        rows = (
            await session.execute(
                sa.select(d, WebhookSubscription)
                .join(WebhookSubscription, WebhookSubscription.id == d.subscription_id)
                .where(d.id.in_(ids))
                .execution_options(populate_existing=True)
            )
        ).all()
        out = []
        for delivery, sub in rows:
            secret = await webhooks.unseal(
                session, settings, sub.account_id, sub.id, sub.secret_wrapped, sub.secret_key_id
            )
            out.append(
                Claimed(
                    id=delivery.id,
                    token=token,
                    subscription_id=sub.id,
                    event_id=delivery.event_id,
                    event_type=delivery.event_type,
                    url=sub.url,
                    body=delivery.body,
                    secret=secret,
                    attempts=delivery.attempts,
                )
            )
        return out

    return await run_in_transaction(ctx.sessions, work, attempts=settings.db_retry_attempts)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, (when - utcnow()).total_seconds())
    return None


async def send(http: httpx.AsyncClient, item: Claimed) -> Outcome:
    body = item.body.encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "rpa-orchestrator-webhooks/1",
        webhooks.SIGNATURE_HEADER: webhooks.sign(item.secret, body),
        webhooks.EVENT_ID_HEADER: str(item.event_id),
        webhooks.EVENT_TYPE_HEADER: item.event_type,
    }
    try:
        response = await http.post(item.url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        # The exception's class only: its text may echo the URL's credentials or query.
        return Outcome(error=type(exc).__name__)
    return Outcome(
        status_code=response.status_code, retry_after_s=_retry_after(response.headers.get("retry-after"))
    )


def backoff_s(ctx: ServiceContext, attempts: int, retry_after_s: float | None) -> float:
    """Exponential from ``webhook_retry_base_s`` with jitter (50-100 %), capped; Retry-After wins
    when it asks for longer (up to the cap)."""
    settings = ctx.settings
    delay = min(settings.webhook_retry_max_s, settings.webhook_retry_base_s * 2 ** max(0, attempts - 1))
    delay *= random.uniform(0.5, 1.0)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, settings.webhook_retry_max_s))
    return delay


async def finish(ctx: ServiceContext, item: Claimed, outcome: Outcome) -> bool:
    """Record ``outcome``; False when the lease was lost (another worker owns the row now)."""
    settings = ctx.settings

    async def work(session: AsyncSession) -> bool:
        now = utcnow()
        d = WebhookDelivery
        values: dict[str, Any] = {
            "claimed_until": None,
            "claim_token": None,
            "last_status_code": outcome.status_code,
            "last_error": outcome.error,
        }
        if outcome.ok:
            values.update(state="delivered", delivered_at=now)
        elif outcome.retryable:
            values["next_attempt_at"] = now + timedelta(
                seconds=backoff_s(ctx, item.attempts, outcome.retry_after_s)
            )
        else:
            values["state"] = "failed"
        done = await session.execute(
            sa.update(d).where(d.id == item.id, d.claim_token == item.token).values(**values)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            return False
        sub = await session.get(WebhookSubscription, item.subscription_id, with_for_update=True)
        if sub is None:
            return True
        if outcome.ok:
            sub.consecutive_failures, sub.failing_since = 0, None
            return True
        sub.consecutive_failures += 1
        sub.failing_since = sub.failing_since or now
        failing_for = (now - sub.failing_since).total_seconds()
        if sub.state == "active" and (
            sub.consecutive_failures >= settings.webhook_pause_after_failures
            or failing_for >= settings.webhook_pause_after_s
        ):
            reason = (
                f"paused after {sub.consecutive_failures} failed deliveries in a row "
                f"(last: {outcome.status_code or outcome.error})"
            )
            sub.state, sub.paused_at, sub.paused_reason, sub.updated_at = "paused", now, reason[:300], now
            add_audit_record(
                session,
                account_id=sub.account_id,
                actor_type=ActorType.SYSTEM,
                actor_id=None,
                actor_name="scheduler",
                action="pause",
                object_type="webhook_subscription",
                object_id=sub.id,
                changes={"state": "paused", "reason": sub.paused_reason},
                kind="system",
            )
            log.warning("webhooks.paused", subscription_id=str(sub.id), failures=sub.consecutive_failures)
        return True

    return await run_in_transaction(ctx.sessions, work, attempts=settings.db_retry_attempts)


async def delivery_pass(ctx: ServiceContext, http: httpx.AsyncClient) -> int:
    """Claim a batch, send it (concurrently: one row per subscription), record each outcome."""
    items = await claim(ctx)
    if not items:
        return 0

    async def one(item: Claimed) -> None:
        outcome = await send(http, item)
        await finish(ctx, item, outcome)

    await asyncio.gather(*(one(i) for i in items))
    return len(items)


class WebhookService:
    """One replica's intake (the durable consumer) and delivery worker."""

    def __init__(self, ctx: ServiceContext, *, intake: bool = True, consumer: str = CONSUMER) -> None:
        self.ctx = ctx
        self.intake = intake
        self.consumer = consumer
        self.wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._subs: list[Any] = []
        self.http: httpx.AsyncClient | None = None

    def start(self) -> None:
        s = self.ctx.settings
        timeout = httpx.Timeout(s.webhook_timeout_s, connect=s.webhook_connect_timeout_s)
        self.http = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        if self.intake:
            self._tasks.append(asyncio.create_task(self._intake_loop(), name="webhook-intake"))
        self._tasks.append(asyncio.create_task(self._delivery_loop(), name="webhook-delivery"))

    async def stop(self) -> None:
        for task in await cancel_all(self._tasks):
            log.warning("webhooks.task_did_not_stop", task=task.get_name())
        self._tasks.clear()
        if self.http is not None:
            await self.http.aclose()

    async def _intake_loop(self) -> None:
        js = self.ctx.nc.jetstream()
        try:
            await self._intake(js)
        finally:
            # A pull subscription left open holds the connection's drain for its whole timeout (30 s).
            for open_sub in self._subs:
                await unsubscribe(open_sub)
            self._subs.clear()

    async def _intake(self, js: Any) -> None:
        sub = None
        while True:
            try:
                if sub is None:
                    await ensure_stream(js)
                    sub = await js.pull_subscribe(ALL_SUBJECTS, durable=self.consumer, stream=STREAM)
                    self._subs.append(sub)
                try:
                    msgs = await sub.fetch(FETCH_BATCH, timeout=1.0)
                except TimeoutError:
                    continue
                for msg in msgs:
                    try:
                        event = Event.model_validate_json(msg.data)
                    except ValueError:
                        log.warning("webhooks.event_undecodable", subject=msg.subject)
                        await msg.term()
                        continue
                    # The event's id is its sequence in the stream (rpa_common.events).
                    event.id = msg.metadata.sequence.stream
                    if await record_event(self.ctx, event):
                        self.wake.set()
                    await msg.ack()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhooks.intake_failed")
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                    self._subs.remove(sub)
                sub = None
                await asyncio.sleep(1.0)

    async def _delivery_loop(self) -> None:
        assert self.http is not None
        every = self.ctx.settings.webhook_poll_interval_s
        while True:
            try:
                self.wake.clear()
                if await delivery_pass(self.ctx, self.http):
                    continue
                await wait_event(self.wake, every)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhooks.delivery_failed")
                await asyncio.sleep(every)
