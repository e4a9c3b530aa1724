"""``robot_message.account_id`` without its foreign key

Checking the key costs a lookup of the account for every line a robot logs: a COPY of 300,000 lines
with time-ordered ids ran at 70,906 rows/s with it and 125,569 without (67,864 and 76,004 with random
ids). Accounts are not deleted by the product; retention removes an
account's lines by ``account_id`` as before, and an operator who deletes an account by hand deletes
its lines too (docs/api-guide.md, Retention).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-03 09:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FK = "fk_robot_message_account_id_account"


def upgrade() -> None:
    op.drop_constraint(FK, "robot_message", type_="foreignkey")


def downgrade() -> None:
    op.execute("DELETE FROM robot_message WHERE account_id NOT IN (SELECT id FROM account)")
    op.create_foreign_key(FK, "robot_message", "account", ["account_id"], ["id"], ondelete="CASCADE")
