"""Hourly queue and robot rollups for the statistics endpoints: ``queue_rollup``, ``robot_rollup``
and ``job_rollup_state.queues_until``/``robots_until`` (how far each account's task history and
robot status intervals are counted)

A month of queue figures by the day read every entry of the month's task history (300,000 for
100,000 tasks: 390 ms in bench/stats.py), a month of robot utilisation every status interval of 50
robots (66,000: 210 ms); each now adds up a row per queue or robot and hour. Existing deployments get
their rows from the next rollup passes (a week of hours a pass per account); until then the calls
read the history, with the same answers.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-03 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rpa_common.models import base as rt

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "queue_rollup",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("hour", rt.UTCDateTime(), nullable=False),
        sa.Column("queue_id", sa.Uuid(), nullable=False),
        sa.Column("added", sa.Integer(), nullable=False),
        sa.Column("ended", sa.Integer(), nullable=False),
        sa.Column("successful", sa.Integer(), nullable=False),
        sa.Column("delta", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
            name=op.f("fk_queue_rollup_account_id_account"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["queue_id"], ["queue.id"], name=op.f("fk_queue_rollup_queue_id_queue"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("account_id", "hour", "queue_id", name=op.f("pk_queue_rollup")),
    )
    op.create_index(op.f("ix_queue_rollup_queue_id"), "queue_rollup", ["queue_id"], unique=False)
    op.create_table(
        "robot_rollup",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("hour", rt.UTCDateTime(), nullable=False),
        sa.Column("robot_id", sa.Uuid(), nullable=False),
        sa.Column("connected_s", sa.Double(), nullable=False),
        sa.Column("working_s", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
            name=op.f("fk_robot_rollup_account_id_account"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["robot_id"], ["robot.id"], name=op.f("fk_robot_rollup_robot_id_robot"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("account_id", "hour", "robot_id", name=op.f("pk_robot_rollup")),
    )
    op.create_index(op.f("ix_robot_rollup_robot_id"), "robot_rollup", ["robot_id"], unique=False)
    op.add_column("job_rollup_state", sa.Column("queues_until", rt.UTCDateTime(), nullable=True))
    op.add_column("job_rollup_state", sa.Column("robots_until", rt.UTCDateTime(), nullable=True))


def downgrade() -> None:
    op.drop_column("job_rollup_state", "robots_until")
    op.drop_column("job_rollup_state", "queues_until")
    op.drop_table("robot_rollup")
    op.drop_table("queue_rollup")
