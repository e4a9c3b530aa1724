"""Processes (published scripts) and their versions; packages are stored in chunks."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from rpa_common.models.base import Base, IdMixin, TimestampMixin, account_fk, folder_fk, unique_name, utcnow


class Process(IdMixin, TimestampMixin, Base):
    __tablename__ = "process"
    __table_args__ = unique_name("process")
    account_id: Mapped[uuid.UUID] = account_fk()
    folder_id: Mapped[uuid.UUID | None] = folder_fk()
    name: Mapped[str] = mapped_column(sa.String(100))
    description: Mapped[str] = mapped_column(sa.String(1000), default="")
    current_version_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("process_version.id", ondelete="SET NULL", use_alter=True), index=True
    )
    min_runtime_version: Mapped[str | None] = mapped_column(sa.String(50))


class ProcessVersion(IdMixin, Base):
    __tablename__ = "process_version"
    __table_args__ = (sa.UniqueConstraint("process_id", "version"),)
    account_id: Mapped[uuid.UUID] = account_fk()
    process_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("process.id", ondelete="CASCADE"), index=True)
    version: Mapped[str] = mapped_column(sa.String(50))
    notes: Mapped[str] = mapped_column(sa.Text, default="")
    entry_point: Mapped[str] = mapped_column(sa.String(255))
    min_runtime_version: Mapped[str | None] = mapped_column(sa.String(50))
    # The manifest's default input arguments: a job's input_args are laid over them.
    default_input: Mapped[dict[str, Any] | None]
    sha256: Mapped[str] = mapped_column(sa.String(64), index=True)
    size: Mapped[int] = mapped_column(sa.BigInteger)
    published_by: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("user_account.id", ondelete="SET NULL"), index=True
    )
    published_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProcessPackageChunk(Base):
    """Package bytes in 1 MiB pieces: no blob is ever larger than MariaDB's max_allowed_packet."""

    __tablename__ = "process_package_chunk"
    version_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("process_version.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    data: Mapped[bytes]
