"""licenses: the verified payload of installed keys, why a robot is Unlicensed

``license`` gets the licensee and issue time of its signed document (its id is the document's id);
``robot.status_reason`` says why a robot is Unlicensed (no free seat, license expired).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rpa_common.models import base as rt

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("license", sa.Column("licensee", sa.String(200), nullable=False, server_default=""))
    op.alter_column("license", "licensee", server_default=None, existing_type=sa.String(200))
    op.add_column("license", sa.Column("issued_at", rt.UTCDateTime(), nullable=True))
    op.add_column("robot", sa.Column("status_reason", sa.String(200), nullable=True))


def downgrade() -> None:
    op.drop_column("robot", "status_reason")
    op.drop_column("license", "issued_at")
    op.drop_column("license", "licensee")
