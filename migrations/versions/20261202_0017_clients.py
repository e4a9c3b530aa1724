"""OAuth2 client credentials (external applications), shared API rate-limit counters (issue 12)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rpa_common.models import base as rt

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "external_app",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("secret_hash", sa.String(length=128), nullable=False),
        sa.Column("scopes", rt.JSONType(), nullable=False),
        sa.Column("folder_ids", rt.JSONType(), nullable=True),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("token_version", sa.Integer(), nullable=False),
        sa.Column("last_token_at", rt.UTCDateTime(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", rt.UTCDateTime(), nullable=False),
        sa.Column("updated_at", rt.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
            name=op.f("fk_external_app_account_id_account"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user_account.id"],
            name=op.f("fk_external_app_user_id_user_account"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_external_app")),
        sa.UniqueConstraint("client_id", name=op.f("uq_external_app_client_id")),
    )
    op.create_index(op.f("ix_external_app_account_id"), "external_app", ["account_id"])
    op.create_index(op.f("ix_external_app_user_id"), "external_app", ["user_id"])
    op.create_table(
        "rate_limit_window",
        sa.Column("key", sa.String(length=120), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.Column("expires_at", rt.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_rate_limit_window")),
    )
    op.create_index(op.f("ix_rate_limit_window_expires_at"), "rate_limit_window", ["expires_at"])


def downgrade() -> None:
    op.drop_table("rate_limit_window")
    op.drop_table("external_app")
