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
    utcnow,
)
from rpa_common.models.enums import ActorType, TaskEventKind, TaskPriority, TaskState


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
        # "Take next" reads the queue's Created tasks in the order it gives them out: priority
        # (highest first), then age. Overdue ones are looked up first by their deadline.
        # MariaDB stores the DESC key too (the migration makes it) but reflects it without its
        # direction; the second form is what the schema comparison sees there.
        sa.Index("ix_task_take", "queue_id", "state", sa.text("priority DESC"), "created_at").ddl_if(
            dialect="postgresql"
        ),
        sa.Index("ix_task_take", "queue_id", "state", "priority", "created_at").ddl_if(
            dialect=("mysql", "mariadb")  # type: ignore[arg-type]
        ),
        sa.Index("ix_task_queue_id_state_deadline", "queue_id", "state", "deadline"),
        # The oldest waiting task (statistics) and Created tasks past the queue's abandon timeout.
        sa.Index("ix_task_queue_id_state_created_at", "queue_id", "state", "created_at"),
        # Statistics: tasks ended in a time window.
        sa.Index("ix_task_queue_id_ended_at", "queue_id", "ended_at"),
        # Sweeps over every queue: Postponed tasks due, In Progress tasks whose lock expired.
        sa.Index("ix_task_state_delay_until", "state", "delay_until"),
        sa.Index("ix_task_state_lock_expires_at", "state", "lock_expires_at"),
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
    # Fencing token: each take adds one, and a renew, progress note or finish must carry the current
    # value, so the robot whose lock expired (and whose task went to another robot) changes nothing.
    lock_token: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default=sa.text("0"))
    # The latest progress note of the robot working the task (every note is in the history).
    progress: Mapped[str | None] = mapped_column(sa.String(1000))
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]


class TaskEvent(IdMixin, Base):
    """One entry of a task's history: created, a state change, a progress note, a retry, an edit."""

    __tablename__ = "task_event"
    __table_args__ = (
        sa.Index("ix_task_event_task_id_at", "task_id", "at"),
        # Statistics: an account's task history in a time range (throughput, backlog).
        sa.Index("ix_task_event_account_id_at", "account_id", "at"),
    )
    account_id: Mapped[uuid.UUID] = account_fk()
    task_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("task.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[TaskEventKind] = mapped_column(StrEnumType(TaskEventKind, 16))
    from_state: Mapped[TaskState | None] = mapped_column(StrEnumType(TaskState, 24))
    to_state: Mapped[TaskState | None] = mapped_column(StrEnumType(TaskState, 24))
    actor_type: Mapped[ActorType] = mapped_column(StrEnumType(ActorType, 16))
    actor_id: Mapped[uuid.UUID | None]
    note: Mapped[str | None] = mapped_column(sa.String(1000))
    # The other task of a retry: on the retried task, its retry; on a retry, the task it retries.
    related_task_id: Mapped[uuid.UUID | None]
