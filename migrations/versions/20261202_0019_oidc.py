"""OpenID Connect logins: one row per browser login, from the redirect to the token hand-off

``oidc_login`` keeps a login's state (hashed), nonce and PKCE verifier (encrypted) between the
redirect to the provider and its callback, then the one-time hand-off code (hashed) the web
application trades for its tokens. Identity providers of kind ``oidc`` need no new column.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-02 23:59:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rpa_common.models import base as rt

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "oidc_login",
        sa.Column("provider_id", sa.Uuid(), nullable=False),
        sa.Column("state_hash", sa.String(length=64), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("verifier_encrypted", rt.Blob(), nullable=False),
        sa.Column("redirect_uri", sa.String(length=500), nullable=False),
        sa.Column("created_at", rt.UTCDateTime(), nullable=False),
        sa.Column("expires_at", rt.UTCDateTime(), nullable=False),
        sa.Column("callback_at", rt.UTCDateTime(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("handoff_hash", sa.String(length=64), nullable=True),
        sa.Column("redeemed_at", rt.UTCDateTime(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["identity_provider.id"],
            name=op.f("fk_oidc_login_provider_id_identity_provider"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user_account.id"],
            name=op.f("fk_oidc_login_user_id_user_account"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oidc_login")),
        sa.UniqueConstraint("handoff_hash", name=op.f("uq_oidc_login_handoff_hash")),
        sa.UniqueConstraint("state_hash", name=op.f("uq_oidc_login_state_hash")),
    )
    op.create_index(op.f("ix_oidc_login_expires_at"), "oidc_login", ["expires_at"], unique=False)
    op.create_index(op.f("ix_oidc_login_provider_id"), "oidc_login", ["provider_id"], unique=False)
    op.create_index(op.f("ix_oidc_login_user_id"), "oidc_login", ["user_id"], unique=False)


def downgrade() -> None:
    # The table's indexes go with it (MariaDB refuses to drop one that a foreign key still needs).
    op.drop_table("oidc_login")
