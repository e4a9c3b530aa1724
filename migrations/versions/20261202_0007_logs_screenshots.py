"""robot messages and screenshots: query indexes, blob store keys, retention (reserved: logs/screenshots work)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 14:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_OLD = {
    "ix_robot_message_account_id_at": ["account_id", "at"],
    "ix_robot_message_job_id_at": ["job_id", "at"],
    "ix_robot_message_robot_id_at": ["robot_id", "at"],
}
_NEW = {
    "ix_robot_message_account_id_at_id": ["account_id", "at", "id"],
    "ix_robot_message_job_id_at_id": ["job_id", "at", "id"],
    "ix_robot_message_robot_id_at_id": ["robot_id", "at", "id"],
}


def upgrade() -> None:
    # Log lines: cursor pages over (at, id); the new indexes first, so that MariaDB's foreign key on
    # account_id always has an index to use.
    for name, columns in _NEW.items():
        op.create_index(name, "robot_message", columns, unique=False)
    for name in _OLD:
        op.drop_index(name, table_name="robot_message")
    op.drop_index(op.f("ix_robot_message_account_id"), table_name="robot_message")


def downgrade() -> None:
    op.create_index(op.f("ix_robot_message_account_id"), "robot_message", ["account_id"], unique=False)
    for name, columns in _OLD.items():
        op.create_index(name, "robot_message", columns, unique=False)
    for name in _NEW:
        op.drop_index(name, table_name="robot_message")
