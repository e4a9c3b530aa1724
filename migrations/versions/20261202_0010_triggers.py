"""trigger kinds, misfire policy, fire records (reserved: triggers work)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rpa_common.models import base as rt

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "trigger", sa.Column("jobs_per_tasks", sa.Integer(), server_default=sa.text("1"), nullable=False)
    )
    op.add_column("trigger", sa.Column("completion_states", rt.JSONType(), nullable=True))
    # "trigger" is a reserved word on MariaDB: a table construct quotes it.
    trigger = sa.table("trigger", sa.column("completion_states", rt.JSONType()))
    op.execute(trigger.update().values(completion_states=[]))
    op.alter_column("trigger", "completion_states", existing_type=rt.JSONType(), nullable=False)
    op.add_column(
        "trigger",
        sa.Column("misfire_policy", sa.String(length=16), server_default="fire_once", nullable=False),
    )
    op.add_column(
        "trigger", sa.Column("misfire_grace_s", sa.Integer(), server_default=sa.text("300"), nullable=False)
    )
    op.add_column("trigger", sa.Column("last_job_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        "fk_trigger_last_job_id_job", "trigger", "job", ["last_job_id"], ["id"], ondelete="SET NULL"
    )
    op.add_column("trigger", sa.Column("last_result", sa.String(length=300), nullable=True))
    op.add_column("trigger_fire", sa.Column("scheduled_at", rt.UTCDateTime(), nullable=True))
    op.add_column(
        "trigger_fire", sa.Column("result", sa.String(length=300), server_default="created", nullable=False)
    )
    op.add_column("trigger_fire", sa.Column("claim", sa.String(length=36), nullable=True))
    # One multi-row insert-or-ignore names each occurrence's job before it exists (see the model).
    op.drop_constraint("fk_trigger_fire_job_id_job", "trigger_fire", type_="foreignkey")


def downgrade() -> None:
    op.execute(
        sa.text(
            "UPDATE trigger_fire SET job_id = NULL WHERE job_id IS NOT NULL AND job_id NOT IN (SELECT id FROM job)"
        )
    )
    op.create_foreign_key(
        "fk_trigger_fire_job_id_job", "trigger_fire", "job", ["job_id"], ["id"], ondelete="SET NULL"
    )
    op.drop_column("trigger_fire", "claim")
    op.drop_column("trigger_fire", "result")
    op.drop_column("trigger_fire", "scheduled_at")
    op.drop_column("trigger", "last_result")
    op.drop_constraint("fk_trigger_last_job_id_job", "trigger", type_="foreignkey")
    op.drop_column("trigger", "last_job_id")
    op.drop_column("trigger", "misfire_grace_s")
    op.drop_column("trigger", "misfire_policy")
    op.drop_column("trigger", "completion_states")
    op.drop_column("trigger", "jobs_per_tasks")
