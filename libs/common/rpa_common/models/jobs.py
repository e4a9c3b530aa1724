"""Jobs and their state history."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from rpa_common.models.base import Base, IdMixin, IntEnumType, StrEnumType, TimestampMixin, account_fk, utcnow
from rpa_common.models.enums import ActorType, JobPriority, JobSource, JobState


class Job(IdMixin, TimestampMixin, Base):
    __tablename__ = "job"
    __table_args__ = (
        sa.UniqueConstraint("account_id", "idempotency_key"),
        # Dispatch scans pending jobs by priority then age.
        sa.Index("ix_job_dispatch", "state", "priority", "created_at"),
        sa.Index("ix_job_account_id_created_at", "account_id", "created_at"),
        # Statistics: an account's jobs created in a range, with every column the statistics read,
        # so PostgreSQL answers from the index alone and MariaDB never visits the rows.
        sa.Index(
            "ix_job_stats",
            "account_id",
            "created_at",
            "process_id",
            "robot_id",
            "state",
            "started_at",
            "ended_at",
        ),
        # Statistics over aggregated hours (rpa_common.rollups): an account's jobs not in a final
        # state (covering), and its jobs changed since the rollups' cut-off.
        sa.Index("ix_job_open", "account_id", "state", "created_at", "process_id", "robot_id"),
        sa.Index("ix_job_account_id_updated_at", "account_id", "updated_at"),
    )
    account_id: Mapped[uuid.UUID] = account_fk()
    process_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("process.id", ondelete="RESTRICT"), index=True
    )
    process_version_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("process_version.id", ondelete="RESTRICT"), index=True
    )
    # Exactly one of robot_id / robot_group_id is set at creation; robot_id is filled by dispatch.
    robot_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("robot.id", ondelete="SET NULL"), index=True
    )
    robot_group_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("robot_group.id", ondelete="SET NULL"), index=True
    )
    task_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("task.id", ondelete="SET NULL"), index=True
    )
    trigger_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("trigger.id", ondelete="SET NULL"), index=True
    )
    parent_job_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("job.id", ondelete="SET NULL"))
    state: Mapped[JobState] = mapped_column(StrEnumType(JobState, 16), default=JobState.PENDING)
    priority: Mapped[JobPriority] = mapped_column(IntEnumType(JobPriority), default=JobPriority.NORMAL)
    source: Mapped[JobSource] = mapped_column(StrEnumType(JobSource, 16), default=JobSource.API)
    input_args: Mapped[dict[str, Any]] = mapped_column(default=dict)
    output_args: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(sa.Text)
    # Deadlines given as durations at creation; made absolute when the job starts running.
    stop_after_s: Mapped[int | None]
    interrupt_after_s: Mapped[int | None]
    stop_at: Mapped[datetime | None]
    interrupt_at: Mapped[datetime | None]
    # A job attempt runs once: every robot report names the attempt it belongs to.
    attempt: Mapped[int] = mapped_column(default=0)
    max_retries: Mapped[int] = mapped_column(default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column(index=True)
    # While Starting: when the robot (gateway offer) or its coordinator (OpenSession) was last told,
    # and how often for this attempt. The scheduler tells again when no confirmation came in time,
    # and plans the job again after ``dispatch_max_offers`` (docs/design/dispatch.md).
    offered_at: Mapped[datetime | None]
    offers: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255))
    request_hash: Mapped[str | None] = mapped_column(sa.String(64))
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("user_account.id", ondelete="SET NULL"), index=True
    )
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]


class JobEvent(IdMixin, Base):
    """One transition of a job: from, to, when, who, why."""

    __tablename__ = "job_event"
    __table_args__ = (sa.Index("ix_job_event_job_id_at", "job_id", "at"),)
    account_id: Mapped[uuid.UUID] = account_fk()
    job_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("job.id", ondelete="CASCADE"))
    from_state: Mapped[JobState | None] = mapped_column(StrEnumType(JobState, 16))
    to_state: Mapped[JobState] = mapped_column(StrEnumType(JobState, 16))
    attempt: Mapped[int] = mapped_column(default=0)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_type: Mapped[ActorType] = mapped_column(StrEnumType(ActorType, 16))
    actor_id: Mapped[uuid.UUID | None]
    reason: Mapped[str | None] = mapped_column(sa.String(1000))
