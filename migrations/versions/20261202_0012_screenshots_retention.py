"""screenshots in a blob store, retention of robot messages and screenshots

The ``screenshot`` table keeps metadata only; its bytes move to the blob store (``blob_key``). No
earlier version wrote screenshots, so there are no bytes to move: rows (none in practice) are
dropped. ``blob_deletion`` holds blobs whose rows retention removed, until the blobs are gone.
Accounts get their retention in days (30 by default) for robot messages and for screenshots.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rpa_common.models import base as rt

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(sa.text("DELETE FROM screenshot"))
    op.drop_column("screenshot", "data")
    op.add_column("screenshot", sa.Column("message_id", sa.Uuid(), nullable=True))
    op.add_column("screenshot", sa.Column("width", sa.Integer(), nullable=True))
    op.add_column("screenshot", sa.Column("height", sa.Integer(), nullable=True))
    op.add_column("screenshot", sa.Column("blob_key", sa.String(300), nullable=False))
    op.add_column("screenshot", sa.Column("received_at", rt.UTCDateTime(), nullable=False))
    op.create_index("ix_screenshot_account_id_at", "screenshot", ["account_id", "at"], unique=False)
    op.create_table(
        "blob_deletion",
        sa.Column("blob_key", sa.String(300), nullable=False),
        sa.Column("at", rt.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("blob_key", name=op.f("pk_blob_deletion")),
    )
    op.add_column(
        "account",
        sa.Column("message_retention_days", sa.Integer(), server_default=sa.text("30"), nullable=False),
    )
    op.add_column(
        "account",
        sa.Column("screenshot_retention_days", sa.Integer(), server_default=sa.text("30"), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("account", "screenshot_retention_days")
    op.drop_column("account", "message_retention_days")
    op.drop_table("blob_deletion")
    # The bytes live in the blob store, which a downgrade cannot reach: the rows go.
    op.execute(sa.text("DELETE FROM screenshot"))
    op.drop_index("ix_screenshot_account_id_at", table_name="screenshot")
    op.drop_column("screenshot", "received_at")
    op.drop_column("screenshot", "blob_key")
    op.drop_column("screenshot", "height")
    op.drop_column("screenshot", "width")
    op.drop_column("screenshot", "message_id")
    op.add_column("screenshot", sa.Column("data", rt.Blob(), nullable=False))
