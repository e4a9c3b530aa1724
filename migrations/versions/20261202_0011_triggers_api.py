"""trigger kinds on the API side: the webhook's authentication and its secret at rest

A webhook trigger is called with its secret (header) or an HMAC-SHA256 signature of the body made
with that secret; the secret is stored wrapped (AES-256-GCM) under a credentials master key, so the
API can recompute signatures, and named by the key id that wrapped it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rpa_common.models import base as rt

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("trigger", sa.Column("webhook_auth", sa.String(length=8), nullable=True))
    op.add_column("trigger", sa.Column("webhook_secret_wrapped", rt.Blob(), nullable=True))
    op.add_column("trigger", sa.Column("webhook_key_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("trigger", "webhook_key_id")
    op.drop_column("trigger", "webhook_secret_wrapped")
    op.drop_column("trigger", "webhook_auth")
