"""LDAP and OpenID Connect login (issue 12): placeholder

Reserved so that parallel work gets a fixed place in the chain; the work that owns it replaces
this body (and may rename the file's suffix).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 18:00:00
"""

from collections.abc import Sequence

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
