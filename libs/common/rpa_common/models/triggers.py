"""Triggers, their fire records (one job per occurrence) and calendars."""

from __future__ import annotations

import uuid
from datetime import date, datetime
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
from rpa_common.models.enums import JobPriority, MisfirePolicy, TriggerKind


class Calendar(IdMixin, TimestampMixin, Base):
    """Working and non-working days; a schedule can skip the non-working ones."""

    __tablename__ = "calendar"
    __table_args__ = unique_name("calendar")
    account_id: Mapped[uuid.UUID] = account_fk()
    folder_id: Mapped[uuid.UUID | None] = folder_fk()
    name: Mapped[str] = mapped_column(sa.String(100))
    description: Mapped[str] = mapped_column(sa.String(1000), default="")
    time_zone: Mapped[str] = mapped_column(sa.String(64), default="UTC")
    # ISO weekdays (1 = Monday) that are not worked, e.g. [6, 7].
    weekend_days: Mapped[list[Any]] = mapped_column(default=list)


class CalendarDay(Base):
    """An exception to the weekly rule: a holiday (working=False) or a worked weekend day."""

    __tablename__ = "calendar_day"
    calendar_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("calendar.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    working: Mapped[bool] = mapped_column(default=False)
    note: Mapped[str] = mapped_column(sa.String(200), default="")


class Trigger(IdMixin, TimestampMixin, Base):
    __tablename__ = "trigger"
    __table_args__ = unique_name("trigger")
    account_id: Mapped[uuid.UUID] = account_fk()
    folder_id: Mapped[uuid.UUID | None] = folder_fk()
    name: Mapped[str] = mapped_column(sa.String(100))
    description: Mapped[str] = mapped_column(sa.String(1000), default="")
    kind: Mapped[TriggerKind] = mapped_column(StrEnumType(TriggerKind, 16))
    enabled: Mapped[bool] = mapped_column(default=True)
    process_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("process.id", ondelete="CASCADE"), index=True)
    robot_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("robot.id", ondelete="SET NULL"), index=True
    )
    robot_group_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("robot_group.id", ondelete="SET NULL"), index=True
    )
    priority: Mapped[JobPriority] = mapped_column(IntEnumType(JobPriority), default=JobPriority.NORMAL)
    input_args: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Schedule: cron + time zone, or interval_s, or once at; queue: queue_id + min tasks; ...
    cron: Mapped[str | None] = mapped_column(sa.String(120))
    time_zone: Mapped[str] = mapped_column(sa.String(64), default="UTC")
    interval_s: Mapped[int | None]
    once_at: Mapped[datetime | None]
    calendar_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("calendar.id", ondelete="SET NULL"), index=True
    )
    queue_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("queue.id", ondelete="CASCADE"), index=True
    )
    min_tasks: Mapped[int] = mapped_column(default=1)
    max_jobs: Mapped[int] = mapped_column(default=1)
    source_process_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("process.id", ondelete="CASCADE"), index=True
    )
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Queue: one more job per this many waiting tasks (up to max_jobs).
    jobs_per_tasks: Mapped[int] = mapped_column(default=1)
    # Job completion: the states of the source process's jobs that fire the trigger.
    completion_states: Mapped[list[Any]] = mapped_column(default=list)
    # Schedule: what an occurrence missed by more than a few seconds does.
    misfire_policy: Mapped[MisfirePolicy] = mapped_column(
        StrEnumType(MisfirePolicy, 16), default=MisfirePolicy.FIRE_ONCE
    )
    misfire_grace_s: Mapped[int] = mapped_column(default=300)
    last_fired_at: Mapped[datetime | None]
    last_job_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("job.id", ondelete="SET NULL", use_alter=True)
    )
    # The job it created, or why it created none, for the last occurrence.
    last_result: Mapped[str | None] = mapped_column(sa.String(300))
    # Schedule: the next occurrence not yet decided (the replicas' shared cursor).
    next_fire_at: Mapped[datetime | None] = mapped_column(index=True)
    # Webhook (migration 0011): "secret" (the secret in a header) or "hmac" (a signature of the body);
    # the secret wrapped under the credentials master key ``webhook_key_id`` (rpa_api.triggers.webhook).
    webhook_auth: Mapped[str | None] = mapped_column(sa.String(8))
    webhook_secret_wrapped: Mapped[bytes | None]
    webhook_key_id: Mapped[str | None] = mapped_column(sa.String(64))


class TriggerFire(Base):
    """One occurrence of a trigger; its key makes the occurrence create one job, whoever fires it."""

    __tablename__ = "trigger_fire"
    trigger_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("trigger.id", ondelete="CASCADE"), primary_key=True
    )
    fire_key: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    # No foreign key: one multi-row insert-or-ignore names the job before the winner creates it (in
    # the same transaction); a job deleted later leaves the id of the job this occurrence made.
    job_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    fired_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The occurrence's time for schedules; None for the kinds fired by an event.
    scheduled_at: Mapped[datetime | None]
    # "created" or why no job was made (no current version, target gone, missed...).
    result: Mapped[str] = mapped_column(sa.String(300), default="created")
    # Which insert won: each firing batch writes its own token, and reads back the rows holding it.
    claim: Mapped[str | None] = mapped_column(sa.String(36))
