"""Webhook subscriptions and their deliveries (issue 13).

A subscription says which events of its account (types, optionally one folder) are POSTed to its
URL, signed with its secret (wrapped under the credentials master key, like a webhook trigger's).
The scheduler turns each event of the stream into one delivery row per matching subscription
(unique on ``(subscription_id, event_id)``: a redelivered event adds nothing) and sends the rows
(``rpa_scheduler.webhooks``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from rpa_common.models.base import Base, IdMixin, TimestampMixin, account_fk, folder_fk, utcnow


class WebhookSubscription(IdMixin, TimestampMixin, Base):
    __tablename__ = "webhook_subscription"
    account_id: Mapped[uuid.UUID] = account_fk()
    # The folder filter: only events of objects in this folder (None: every event of the account).
    folder_id: Mapped[uuid.UUID | None] = folder_fk()
    url: Mapped[str] = mapped_column(sa.String(2000))
    description: Mapped[str] = mapped_column(sa.String(1000), default="")
    event_types: Mapped[list[Any]] = mapped_column(default=list)
    enabled: Mapped[bool] = mapped_column(default=True)
    # "active" or "paused" (by a person, or by the scheduler after repeated failure).
    state: Mapped[str] = mapped_column(sa.String(16), default="active")
    paused_reason: Mapped[str | None] = mapped_column(sa.String(300))
    paused_at: Mapped[datetime | None]
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    failing_since: Mapped[datetime | None]
    secret_wrapped: Mapped[bytes]
    secret_key_id: Mapped[str] = mapped_column(sa.String(64))


class WebhookDelivery(IdMixin, Base):
    __tablename__ = "webhook_delivery"
    __table_args__ = (sa.UniqueConstraint("subscription_id", "event_id"),)
    subscription_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("webhook_subscription.id", ondelete="CASCADE"), index=True
    )
    account_id: Mapped[uuid.UUID] = account_fk()
    event_id: Mapped[int] = mapped_column(sa.BigInteger)
    event_type: Mapped[str] = mapped_column(sa.String(64))
    body: Mapped[str] = mapped_column(sa.Text)
    # "pending" (to send, or being retried), "delivered", "failed" (a 4xx other than 408/429).
    state: Mapped[str] = mapped_column(sa.String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # A worker's lease: until then no other worker sends this row; expired, it is sent again.
    claimed_until: Mapped[datetime | None]
    claim_token: Mapped[str | None] = mapped_column(sa.String(32))
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
