"""coordinator RDP sessions: sealed credentials, session life

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 10:30:00
"""

from collections.abc import Sequence

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Filled by the change that needs it (reserved so parallel work keeps one chain)."""


def downgrade() -> None:
    """See upgrade()."""
