"""The append-only audit trail."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from rpa_common.models.base import Base, IdMixin, StrEnumType, account_fk, utcnow
from rpa_common.models.enums import ActorType


class AuditRecord(IdMixin, Base):
    __tablename__ = "audit_record"
    __table_args__ = (sa.Index("ix_audit_record_account_id_at", "account_id", "at"),)
    account_id: Mapped[uuid.UUID] = account_fk()
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(sa.String(50))
    actor_type: Mapped[ActorType] = mapped_column(StrEnumType(ActorType, 16))
    actor_id: Mapped[uuid.UUID | None]
    actor_name: Mapped[str | None] = mapped_column(sa.String(200))
    action: Mapped[str] = mapped_column(sa.String(50))
    object_type: Mapped[str] = mapped_column(sa.String(50))
    object_id: Mapped[str | None] = mapped_column(sa.String(100))
    changes: Mapped[dict[str, Any] | None]
    client_address: Mapped[str | None] = mapped_column(sa.String(100))
    user_agent: Mapped[str | None] = mapped_column(sa.String(500))
