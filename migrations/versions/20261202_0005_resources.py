"""resources and credentials: envelope encryption, master key checks, names unique per account

- ``resource_value`` gets the columns of envelope encryption: the password's nonce (its AES-GCM
  ciphertext stays in ``secret_encrypted``), the data key wrapped by a master key, and that master
  key's id (indexed: the rotation command looks for data keys not yet under the current key).
- ``master_key_check``: one record per master key id, proving at start that the configured key is
  the one that wrapped the stored data keys.
- A resource's name becomes unique in its account (robots ask for resources by name), not only in
  its group; ``resource.group_id`` gets its own index (on MariaDB the old unique key served its
  foreign key).
- Built-in roles of existing accounts get the new permissions: ``credentials:reveal`` (Administrator
  only) and ``calendars`` (as ``rpa_api.roles.builtin`` gives them to new accounts).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rpa_common.models import base as rt

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here: a later change of the built-in roles gets a migration of its own.
_NEW_PERMISSIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "Administrator": (
        ("credentials", "reveal"),
        ("calendars", "read"),
        ("calendars", "create"),
        ("calendars", "update"),
        ("calendars", "delete"),
        ("calendars", "run"),
    ),
    "Developer": (
        ("calendars", "read"),
        ("calendars", "create"),
        ("calendars", "update"),
        ("calendars", "delete"),
    ),
    "Operator": (("calendars", "read"),),
    "Viewer": (("calendars", "read"),),
}

_role = sa.table("role", sa.column("id", sa.Uuid()), sa.column("name", sa.String()), sa.column("builtin"))
_permission = sa.table(
    "role_permission",
    sa.column("role_id", sa.Uuid()),
    sa.column("object", sa.String()),
    sa.column("action", sa.String()),
)


def upgrade() -> None:
    bind = op.get_bind()
    op.add_column("resource_value", sa.Column("secret_nonce", rt.Blob(), nullable=True))
    op.add_column("resource_value", sa.Column("data_key_wrapped", rt.Blob(), nullable=True))
    op.add_column("resource_value", sa.Column("master_key_id", sa.String(length=64), nullable=True))
    op.create_index(
        op.f("ix_resource_value_master_key_id"), "resource_value", ["master_key_id"], unique=False
    )
    op.create_table(
        "master_key_check",
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("check_encrypted", rt.Blob(), nullable=False),
        sa.Column("created_at", rt.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_master_key_check")),
    )
    op.create_index(op.f("ix_resource_group_id"), "resource", ["group_id"], unique=False)
    if bind.dialect.name == "postgresql":
        op.drop_index("uq_resource_group_id_lower_name", table_name="resource")
        op.create_index(
            "uq_resource_account_id_lower_name",
            "resource",
            ["account_id", sa.text("lower(name)")],
            unique=True,
        )
    else:
        op.drop_constraint("uq_resource_group_id_name", "resource", type_="unique")
        op.create_unique_constraint("uq_resource_account_id_name", "resource", ["account_id", "name"])
    for role_name, pairs in _NEW_PERMISSIONS.items():
        for obj, action in pairs:
            roles = sa.select(_role.c.id, sa.literal(obj), sa.literal(action)).where(
                _role.c.name == role_name,
                _role.c.builtin.is_(sa.true()),
                ~sa.exists().where(
                    _permission.c.role_id == _role.c.id,
                    _permission.c.object == obj,
                    _permission.c.action == action,
                ),
            )
            op.execute(_permission.insert().from_select(["role_id", "object", "action"], roles))


def downgrade() -> None:
    bind = op.get_bind()
    op.execute(
        _permission.delete().where(
            sa.or_(_permission.c.object.in_(("credentials", "calendars")), _permission.c.action == "reveal")
        )
    )
    if bind.dialect.name == "postgresql":
        op.drop_index("uq_resource_account_id_lower_name", table_name="resource")
        op.create_index(
            "uq_resource_group_id_lower_name", "resource", ["group_id", sa.text("lower(name)")], unique=True
        )
    else:
        op.drop_constraint("uq_resource_account_id_name", "resource", type_="unique")
        op.create_unique_constraint("uq_resource_group_id_name", "resource", ["group_id", "name"])
    op.drop_index(op.f("ix_resource_group_id"), table_name="resource")
    op.drop_table("master_key_check")
    op.drop_index(op.f("ix_resource_value_master_key_id"), table_name="resource_value")
    op.drop_column("resource_value", "master_key_id")
    op.drop_column("resource_value", "data_key_wrapped")
    op.drop_column("resource_value", "secret_nonce")
