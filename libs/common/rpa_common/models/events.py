"""The event outbox: changes waiting to be relayed to the event stream (issue 13).

A row is written in the transaction of the change it describes, so an event exists if and only if
the change committed. The scheduler's relay publishes rows to JetStream (``Nats-Msg-Id`` = the
row's id, so a row published twice is stored once) and deletes them after the stream's ack.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from rpa_common.models.base import Base


class EventOutbox(Base):
    __tablename__ = "event_outbox"
    # Ordered by id: the relay publishes in commit-ish order and deletes what the stream acked. No
    # foreign keys: the row is one insert on the hot path, and it only lives until the relay runs.
    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    type: Mapped[str] = mapped_column(sa.String(40))
    account_id: Mapped[uuid.UUID]
    folder_id: Mapped[uuid.UUID | None]
    object_id: Mapped[uuid.UUID | None]
    at: Mapped[datetime]
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class EventTicket(Base):
    """A single-use, short-lived ticket opening one event stream (a browser's ``EventSource`` cannot
    send ``Authorization``). Only the ticket's SHA-256 is stored; using it deletes the row."""

    __tablename__ = "event_ticket"
    ticket_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    account_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("account.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("user_account.id", ondelete="CASCADE"), index=True
    )
    api_key_id: Mapped[uuid.UUID | None]
    expires_at: Mapped[datetime] = mapped_column(index=True)
