"""Robot messages (logs) and screenshots."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from rpa_common.models.base import Base, IntEnumType, account_fk, utcnow
from rpa_common.models.enums import LogLevel


class RobotMessage(Base):
    """One log line. The id is made by the robot, so a replayed batch is stored once.

    Indexes serve the cursor pages (``at``, ``id``) of the three usual ways in: an account's lines,
    a job's, a robot's; every other filter (process, level, text...) narrows one of those. No more
    indexes than that: each costs on every one of tens of thousands of lines a second."""

    __tablename__ = "robot_message"
    __table_args__ = (
        sa.Index("ix_robot_message_account_id_at_id", "account_id", "at", "id"),
        sa.Index("ix_robot_message_job_id_at_id", "job_id", "at", "id"),
        sa.Index("ix_robot_message_robot_id_at_id", "robot_id", "at", "id"),
    )
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    # No foreign key: checking it looks the account up for every line (a COPY of time-ordered lines
    # 71,000 rows/s with it, 126,000 without). Accounts are not deleted by the product (0021).
    account_id: Mapped[uuid.UUID]
    robot_id: Mapped[uuid.UUID | None]
    process_id: Mapped[uuid.UUID | None]
    process_version_id: Mapped[uuid.UUID | None]
    job_id: Mapped[uuid.UUID | None]
    task_id: Mapped[uuid.UUID | None]
    level: Mapped[LogLevel] = mapped_column(IntEnumType(LogLevel))
    message: Mapped[str] = mapped_column(sa.Text)
    fields: Mapped[dict[str, Any] | None]
    at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    screenshot_id: Mapped[uuid.UUID | None]


class Screenshot(Base):
    """A screenshot's metadata; its bytes are in the blob store under ``blob_key``."""

    __tablename__ = "screenshot"
    __table_args__ = (
        sa.Index("ix_screenshot_job_id_at", "job_id", "at"),
        sa.Index("ix_screenshot_account_id_at", "account_id", "at"),
    )
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    account_id: Mapped[uuid.UUID] = account_fk()
    robot_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    job_id: Mapped[uuid.UUID | None]
    message_id: Mapped[uuid.UUID | None]
    content_type: Mapped[str] = mapped_column(sa.String(50), default="image/png")
    size: Mapped[int] = mapped_column(sa.BigInteger)
    width: Mapped[int | None]
    height: Mapped[int | None]
    blob_key: Mapped[str] = mapped_column(sa.String(300))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
