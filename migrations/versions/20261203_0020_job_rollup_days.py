"""Daily job rollups beside the hourly ones: ``job_rollup.kind`` wide enough for ``process.day`` and
``robot.day``, and ``job_rollup_state.days_until`` (the day rows' reach)

A statistics call bucketed by day over a month adds up 30 rows per key and state instead of 720.
Existing deployments get their day rows from the next rollup passes (from the hourly rows); until
then the calls read the hourly rows, with the same answers.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-03 03:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rpa_common.models import base as rt

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column(
        "job_rollup", "kind", existing_type=sa.String(length=8), type_=sa.String(length=16), nullable=False
    )
    op.add_column("job_rollup_state", sa.Column("days_until", rt.UTCDateTime(), nullable=True))


def downgrade() -> None:
    op.drop_column("job_rollup_state", "days_until")
    op.execute("DELETE FROM job_rollup WHERE kind LIKE '%.day'")
    op.alter_column(
        "job_rollup", "kind", existing_type=sa.String(length=16), type_=sa.String(length=8), nullable=False
    )
