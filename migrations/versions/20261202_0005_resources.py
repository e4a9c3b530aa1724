"""resources and credentials: envelope encryption, scopes

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:30:00
"""

from collections.abc import Sequence

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Filled by the change that needs it (reserved so parallel work keeps one chain)."""


def downgrade() -> None:
    """See upgrade()."""
