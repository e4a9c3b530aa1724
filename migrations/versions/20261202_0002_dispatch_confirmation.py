"""dispatch confirmation: offers of a Starting job, the session key for a re-sent OpenSession

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 06:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rpa_common.models import base as rt

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job", sa.Column("offered_at", rt.UTCDateTime(), nullable=True))
    op.add_column("job", sa.Column("offers", sa.Integer(), server_default=sa.text("0"), nullable=False))
    op.add_column("terminal_session", sa.Column("robot_key_encrypted", rt.Blob(), nullable=True))


def downgrade() -> None:
    op.drop_column("terminal_session", "robot_key_encrypted")
    op.drop_column("job", "offers")
    op.drop_column("job", "offered_at")
