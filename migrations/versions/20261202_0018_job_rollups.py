"""Hourly job rollups for the statistics endpoints (issue 10): job_rollup, job_rollup_state, and the
job indexes the statistics read beside them (open jobs, jobs changed since the cut-off)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-02 23:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rpa_common.models import base as rt

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HIST_BINS = 64


def upgrade() -> None:
    op.create_table(
        "job_rollup",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("hour", rt.UTCDateTime(), nullable=False),
        sa.Column("key_id", sa.Uuid(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("jobs", sa.Integer(), nullable=False),
        sa.Column("timed", sa.Integer(), nullable=False),
        sa.Column("d_min", sa.Float(), nullable=True),
        sa.Column("d_max", sa.Float(), nullable=True),
        *[sa.Column(f"h{k}", sa.Integer(), nullable=False) for k in range(HIST_BINS)],
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
            name=op.f("fk_job_rollup_account_id_account"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "kind", "hour", "key_id", "state", name=op.f("pk_job_rollup")),
    )
    op.create_index(
        "ix_job_rollup_counts",
        "job_rollup",
        ["account_id", "kind", "hour", "key_id", "state", "jobs"],
        unique=False,
    )
    op.create_table(
        "job_rollup_state",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("sealed_until", rt.UTCDateTime(), nullable=True),
        sa.Column("cutoff", rt.UTCDateTime(), nullable=True),
        sa.Column("passed_at", rt.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
            name=op.f("fk_job_rollup_state_account_id_account"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_job_rollup_state")),
    )
    op.create_index(
        "ix_job_open", "job", ["account_id", "state", "created_at", "process_id", "robot_id"], unique=False
    )
    op.create_index("ix_job_account_id_updated_at", "job", ["account_id", "updated_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_job_account_id_updated_at", table_name="job")
    op.drop_index("ix_job_open", table_name="job")
    op.drop_table("job_rollup_state")
    op.drop_index("ix_job_rollup_counts", table_name="job_rollup")
    op.drop_table("job_rollup")
