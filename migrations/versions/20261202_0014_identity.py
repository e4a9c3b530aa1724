"""identity providers: per-account LDAP login (issue 12)

``identity_provider`` holds an account's external directory: non-secret settings as JSON, the group
to role mapping, and the service bind password encrypted (never readable through the API).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rpa_common.models import base as rt

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "identity_provider",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("config", rt.JSONType(), nullable=False),
        sa.Column("group_roles", rt.JSONType(), nullable=False),
        sa.Column("secret_encrypted", rt.Blob(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", rt.UTCDateTime(), nullable=False),
        sa.Column("updated_at", rt.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
            name=op.f("fk_identity_provider_account_id_account"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_provider")),
        sa.UniqueConstraint("account_id", "name", name=op.f("uq_identity_provider_account_id_name")),
    )
    op.create_index(
        op.f("ix_identity_provider_account_id"), "identity_provider", ["account_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_identity_provider_account_id"), table_name="identity_provider")
    op.drop_table("identity_provider")
