"""Queues and their tasks (queue items)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from rpa_common.models.base import (
    Base,
    IdMixin,
    IntEnumType,
    StrEnumType,
    TimestampMixin,
    account_fk,
    folder_fk,
    unique_name,
)
from rpa_common.models.enums import TaskPriority, TaskState


class Queue(IdMixin, TimestampMixin, Base):
    __tablename__ = "queue"
    __table_args__ = unique_name("queue")
    account_id: Mapped[uuid.UUID] = account_fk()
    folder_id: Mapped[uuid.UUID | None] = folder_fk()
    name: Mapped[str] = mapped_column(sa.String(100))
    description: Mapped[str] = mapped_column(sa.String(1000), default="")
    created_abandon_s: Mapped[int | None]
    in_progress_abandon_s: Mapped[int | None]
    max_retries: Mapped[int] = mapped_column(default=0)
    fail_on_job_failed: Mapped[bool] = mapped_column(default=True)
    fail_on_job_stopped: Mapped[bool] = mapped_column(default=True)
    fail_on_job_interrupted: Mapped[bool] = mapped_column(default=True)
    retry_failed_application: Mapped[bool] = mapped_column(default=True)
    retry_failed_business: Mapped[bool] = mapped_column(default=False)
    retry_abandoned: Mapped[bool] = mapped_column(default=False)
    unique_task_names: Mapped[bool] = mapped_column(default=False)


class Task(IdMixin, TimestampMixin, Base):
    __tablename__ = "task"
    __table_args__ = (
        # Set only when the queue forbids duplicate names; NULLs never collide.
        *unique_name("task", "unique_name"),
        # "Take next": state, then overdue first, priority, age.
        sa.Index("ix_task_take", "queue_id", "state", "priority", "created_at"),
    )
    account_id: Mapped[uuid.UUID] = account_fk()
    queue_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("queue.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(255))
    unique_name: Mapped[str | None] = mapped_column(sa.String(255))
    description: Mapped[str] = mapped_column(sa.String(1000), default="")
    comment: Mapped[str] = mapped_column(sa.String(1000), default="")
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    priority: Mapped[TaskPriority] = mapped_column(IntEnumType(TaskPriority), default=TaskPriority.NORMAL)
    tags: Mapped[list[Any]] = mapped_column(default=list)
    state: Mapped[TaskState] = mapped_column(StrEnumType(TaskState, 24), default=TaskState.CREATED)
    delay_until: Mapped[datetime | None]
    deadline: Mapped[datetime | None]
    retry_number: Mapped[int] = mapped_column(default=0)
    retry_of_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("task.id", ondelete="SET NULL"))
    output: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(sa.Text)
    lock_robot_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("robot.id", ondelete="SET NULL"), index=True
    )
    lock_job_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    lock_expires_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
