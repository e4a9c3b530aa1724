"""unique names compare case-insensitively on PostgreSQL and MariaDB alike

PostgreSQL: each ``UNIQUE (scope..., name)`` becomes a unique index on ``(scope..., lower(name))``.
MariaDB: the unique keys stay; the name columns get a case-insensitive, accent-sensitive, no-pad
collation (``utf8mb4_uca1400_nopad_as_ci``, MariaDB 10.10+), which compares as ``lower()`` does on
PostgreSQL; the server's default (``utf8mb4_general_ci``) also equates "e" with "é" and ignores
trailing spaces. Older MariaDB gets ``utf8mb4_general_nopad_ci``. See ``models.base.UNIQUE_NAMES``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 06:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rpa_common.models.base import NAME_COLLATION_MARIADB, NAME_COLLATION_MARIADB_OLD

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here (a copy of UNIQUE_NAMES as it was): a later change of UNIQUE_NAMES gets a migration of
# its own (0005 makes resource names unique per account).
NAMES: tuple[tuple[str, tuple[str, ...], str, int, bool], ...] = (
    ("account", (), "name", 100, False),
    ("access_folder", ("account_id",), "name", 100, False),
    ("role", ("account_id",), "name", 100, False),
    ("user_account", (), "username", 150, False),
    ("calendar", ("account_id",), "name", 100, False),
    ("process", ("account_id",), "name", 100, False),
    ("queue", ("account_id",), "name", 100, False),
    ("task", ("queue_id",), "unique_name", 255, True),
    ("resource_group", ("account_id",), "name", 100, False),
    ("resource", ("group_id",), "name", 100, False),
    ("robot", ("account_id",), "name", 100, False),
    ("robot_group", ("account_id",), "name", 100, False),
    ("terminal_server", ("account_id",), "name", 100, False),
    ("unattended_account", ("terminal_server_id",), "login", 255, False),
    ("trigger", ("account_id",), "name", 100, False),
)


def _constraint(table: str, scope: tuple[str, ...], column: str) -> str:
    return "_".join(["uq", table, *scope, column])


def _index(table: str, scope: tuple[str, ...], column: str) -> str:
    return "_".join(["uq", table, *scope, "lower", column])


def _mariadb_collation(bind: sa.engine.Connection) -> str:
    found = bind.execute(sa.text("SHOW COLLATION LIKE :name"), {"name": NAME_COLLATION_MARIADB}).first()
    return NAME_COLLATION_MARIADB if found is not None else NAME_COLLATION_MARIADB_OLD


def _modify(table: str, column: str, length: int, nullable: bool, collation: str) -> None:
    null = "NULL" if nullable else "NOT NULL"
    op.execute(
        f"ALTER TABLE `{table}` MODIFY `{column}` VARCHAR({length}) "
        f"CHARACTER SET utf8mb4 COLLATE {collation} {null}"
    )


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for table, scope, column, _, _ in NAMES:
            op.drop_constraint(_constraint(table, scope, column), table, type_="unique")
            op.create_index(
                _index(table, scope, column), table, [*scope, sa.text(f"lower({column})")], unique=True
            )
    else:
        collation = _mariadb_collation(bind)
        for table, _, column, length, nullable in NAMES:
            _modify(table, column, length, nullable, collation)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for table, scope, column, _, _ in NAMES:
            op.drop_index(_index(table, scope, column), table_name=table)
            op.create_unique_constraint(_constraint(table, scope, column), table, [*scope, column])
    else:
        for table, _, column, length, nullable in NAMES:
            _modify(table, column, length, nullable, "utf8mb4_general_ci")
