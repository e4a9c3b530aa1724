"""What the statistics API reads besides jobs and tasks: the history of each robot's status, and the
hourly job rollups the scheduler keeps."""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from rpa_common.models.base import Base, IdMixin, StrEnumType, UTCDateTime
from rpa_common.models.enums import JobState, RobotStatus


class RobotStatusInterval(IdMixin, Base):
    """One stretch of time a robot spent connected in one status (Ready, Working, Unlicensed).

    A robot has at most one open interval (``ended_at`` null): the status it has now. Going
    Disconnected closes it and opens none, so time disconnected has no rows. Written only when the
    status actually changes (``rpa_common.robot_history``), in the transaction that changes it.
    """

    __tablename__ = "robot_status_interval"
    __table_args__ = (
        # Closing the open interval of a robot (and the robot foreign key).
        sa.Index("ix_robot_status_interval_robot_id_ended_at", "robot_id", "ended_at"),
        # Statistics: an account's intervals that end after the start of a range (or are open),
        # covering so the utilisation query reads the index alone.
        sa.Index(
            "ix_robot_status_interval_stats", "account_id", "ended_at", "started_at", "robot_id", "status"
        ),
    )
    account_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("account.id", ondelete="CASCADE"))
    robot_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("robot.id", ondelete="CASCADE"))
    status: Mapped[RobotStatus] = mapped_column(StrEnumType(RobotStatus, 16))
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]


HIST_BINS = 64
"""Run-time histogram bins of a job rollup row: bin 0 is [0, 1 s); bin k (1-62) is
[2^((k-1)/4), 2^(k/4)) s, each 19 % wider than the last; bin 63 is 2^15.5 s (12.9 h) and longer."""


class JobRollup(Base):
    """Jobs of one account created in one UTC hour, in a final state, counted per process or per
    robot (``kind``) and state, with a histogram of their run times: what the statistics endpoints
    add up for hours the scheduler has aggregated (``rpa_common.rollups``) instead of reading every
    job. A final job's row never changes, so a recomputed hour is the same unless a job changed.

    ``kind`` is ``process`` (``key_id``: the process) or ``robot`` (``key_id``: the robot, the nil
    UUID for none); ``process.day`` and ``robot.day`` are the same per UTC day (``hour`` is the
    day's first), the sums of the day's hourly rows. ``timed``: of ``jobs``, those with a start and an end, which the histogram
    counts; ``d_min``/``d_max`` their shortest and longest run. The histogram is one column per bin
    (``h0`` ... ``h63``, read through ``hist_columns``), so adding up hours is one SUM per column."""

    __table__ = sa.Table(
        "job_rollup",
        Base.metadata,
        sa.Column("account_id", sa.Uuid(), sa.ForeignKey("account.id", ondelete="CASCADE"), primary_key=True),
        # Key order: a call reads one account's rows of one kind over a range of hours.
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("hour", UTCDateTime(), primary_key=True),
        sa.Column("key_id", sa.Uuid(), primary_key=True),
        sa.Column("state", StrEnumType(JobState, 16), primary_key=True),
        sa.Column("jobs", sa.Integer(), nullable=False),
        sa.Column("timed", sa.Integer(), nullable=False),
        sa.Column("d_min", sa.Float(), nullable=True),
        sa.Column("d_max", sa.Float(), nullable=True),
        *[sa.Column(f"h{k}", sa.Integer(), nullable=False, default=0) for k in range(HIST_BINS)],
        # Counts and success rates read only these columns: from this narrow index alone, not
        # from the rows, which the 64 histogram columns make wide.
        sa.Index("ix_job_rollup_counts", "account_id", "kind", "hour", "key_id", "state", "jobs"),
    )
    account_id: Mapped[uuid.UUID]
    hour: Mapped[datetime]
    kind: Mapped[str]
    key_id: Mapped[uuid.UUID]
    state: Mapped[JobState]
    jobs: Mapped[int]
    timed: Mapped[int]
    d_min: Mapped[float | None]
    d_max: Mapped[float | None]


class JobRollupState(Base):
    """How far an account's jobs are aggregated: every hour before ``sealed_until`` has its
    ``job_rollup`` rows, and they count exactly the final jobs of the hour whose ``updated_at`` is
    before ``cutoff``; the statistics read every other job of those hours themselves."""

    __tablename__ = "job_rollup_state"
    account_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("account.id", ondelete="CASCADE"), primary_key=True
    )
    sealed_until: Mapped[datetime | None]
    cutoff: Mapped[datetime | None]
    days_until: Mapped[datetime | None]
    """Every day before it (a UTC midnight, at most ``sealed_until``) has its day rows."""
    queues_until: Mapped[datetime | None]
    """Every hour before it has its ``queue_rollup`` rows (an hour boundary, before ``cutoff``)."""
    robots_until: Mapped[datetime | None]
    """Every hour before it has its ``robot_rollup`` rows (an hour boundary, before ``cutoff``)."""
    passed_at: Mapped[datetime | None]


class QueueRollup(Base):
    """One account's queue's task history in one UTC hour, counted (``rpa_common.rollups``): tasks
    added, tasks that reached a final state and of those the Successful ones, and the change to the
    number waiting (entries into Created/Postponed less those out of them). The history only grows
    and its entries are stamped when written, so an hour's row, made once the hour is older than
    the rollup margin, never changes; the queue statistics read the history itself after it."""

    __tablename__ = "queue_rollup"
    account_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("account.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    queue_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("queue.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    added: Mapped[int]
    ended: Mapped[int]
    successful: Mapped[int]
    delta: Mapped[int]


class RobotRollup(Base):
    """One account's robot's time in one UTC hour (``rpa_common.rollups``): seconds connected (any
    status) and seconds Working, from its status intervals. Made once the hour has ended before the
    rollup margin (nothing changes it after); robot utilisation reads the intervals themselves after
    it."""

    __tablename__ = "robot_rollup"
    account_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("account.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    robot_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("robot.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    connected_s: Mapped[float]
    working_s: Mapped[float]


def hist_columns() -> list[sa.Column[int]]:
    table: sa.Table = JobRollup.__table__
    return [table.c[f"h{k}"] for k in range(HIST_BINS)]
