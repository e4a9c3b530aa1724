"""Licenses: signed documents the orchestrator verifies, assigned to robots."""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from rpa_common.models.base import Base, IdMixin, StrEnumType, TimestampMixin, account_fk, utcnow
from rpa_common.models.enums import LicenseKind


class License(IdMixin, TimestampMixin, Base):
    """An installed license key. ``id`` is the license's own id from the signed document, so a key
    is installed once (in one account) and a second install of it is a conflict."""

    __tablename__ = "license"
    account_id: Mapped[uuid.UUID] = account_fk()
    name: Mapped[str] = mapped_column(sa.String(100))
    kind: Mapped[LicenseKind] = mapped_column(StrEnumType(LicenseKind, 24))
    capacity: Mapped[int]
    expires_at: Mapped[datetime | None]
    key: Mapped[str] = mapped_column(sa.Text)
    licensee: Mapped[str] = mapped_column(sa.String(200), default="")
    issued_at: Mapped[datetime | None]


class LicenseAssignment(Base):
    __tablename__ = "license_assignment"
    license_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("license.id", ondelete="CASCADE"), primary_key=True
    )
    robot_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("robot.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    assigned_at: Mapped[datetime] = mapped_column(default=utcnow)
