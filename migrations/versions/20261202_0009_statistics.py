"""statistics indexes and robot status history (reserved: statistics work)

- ``robot_status_interval``: each stretch of time a robot spent connected in one status; the open
  one (``ended_at`` null) is its status now. Robot utilisation is read from it.
- ``ix_job_stats``: the jobs of an account by creation time, covering every column the statistics
  read (state, process, robot, start, end).
- ``ix_task_event_account_id_at``: an account's task history by time (queue throughput, backlog).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 14:30:00
"""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rpa_common.models import base as rt

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "robot_status_interval",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("robot_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", rt.UTCDateTime(), nullable=False),
        sa.Column("ended_at", rt.UTCDateTime(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
            name=op.f("fk_robot_status_interval_account_id_account"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["robot_id"],
            ["robot.id"],
            name=op.f("fk_robot_status_interval_robot_id_robot"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_robot_status_interval")),
    )
    op.create_index(
        "ix_robot_status_interval_robot_id_ended_at", "robot_status_interval", ["robot_id", "ended_at"]
    )
    op.create_index(
        "ix_robot_status_interval_stats",
        "robot_status_interval",
        ["account_id", "ended_at", "started_at", "robot_id", "status"],
    )
    op.create_index(
        "ix_job_stats",
        "job",
        ["account_id", "created_at", "process_id", "robot_id", "state", "started_at", "ended_at"],
    )
    op.create_index("ix_task_event_account_id_at", "task_event", ["account_id", "at"])
    # Robots connected now get their open interval, from when they connected.
    robot = sa.table(
        "robot",
        sa.column("id", sa.Uuid()),
        sa.column("account_id", sa.Uuid()),
        sa.column("status", sa.String()),
        sa.column("connected_at", rt.UTCDateTime()),
        sa.column("updated_at", rt.UTCDateTime()),
    )
    interval = sa.table(
        "robot_status_interval",
        sa.column("id", sa.Uuid()),
        sa.column("account_id", sa.Uuid()),
        sa.column("robot_id", sa.Uuid()),
        sa.column("status", sa.String()),
        sa.column("started_at", rt.UTCDateTime()),
    )
    rows = op.get_bind().execute(
        sa.select(
            robot.c.id, robot.c.account_id, robot.c.status, robot.c.connected_at, robot.c.updated_at
        ).where(robot.c.status != "Disconnected")
    )
    values = [
        {
            "id": uuid.uuid4(),
            "account_id": r.account_id,
            "robot_id": r.id,
            "status": r.status,
            "started_at": r.connected_at or r.updated_at or rt.utcnow(),
        }
        for r in rows
    ]
    if values:
        op.bulk_insert(interval, values)


def downgrade() -> None:
    op.drop_index("ix_task_event_account_id_at", table_name="task_event")
    op.drop_index("ix_job_stats", table_name="job")
    op.drop_table("robot_status_interval")
