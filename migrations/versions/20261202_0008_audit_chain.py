"""audit trail hash chain: seq, prev_hash and hash per record, one chain head per account

Records written before this revision are chained here, per account in the order they were written
(time, then id), so every account's chain starts at seq 1 and ``verify`` checks them like any other.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rpa_common.audit import HASHED_FIELDS, record_hash
from rpa_common.models import base as rt

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS_HASH = "0" * 64
_PAGE = 1000


def _chain_existing() -> None:
    bind = op.get_bind()
    record = sa.table(
        "audit_record",
        sa.column("id", sa.Uuid()),
        sa.column("account_id", sa.Uuid()),
        sa.column("at", rt.UTCDateTime()),
        sa.column("kind", sa.String()),
        sa.column("actor_type", sa.String()),
        sa.column("actor_id", sa.Uuid()),
        sa.column("actor_name", sa.String()),
        sa.column("action", sa.String()),
        sa.column("object_type", sa.String()),
        sa.column("object_id", sa.String()),
        sa.column("changes", sa.JSON()),
        sa.column("client_address", sa.String()),
        sa.column("user_agent", sa.String()),
        sa.column("seq", sa.BigInteger()),
        sa.column("prev_hash", sa.String()),
        sa.column("hash", sa.String()),
    )
    chain = sa.table(
        "audit_chain",
        sa.column("account_id", sa.Uuid()),
        sa.column("seq", sa.BigInteger()),
        sa.column("hash", sa.String()),
    )
    accounts = [r[0] for r in bind.execute(sa.select(record.c.account_id).distinct())]
    cols = [record.c[name] for name in HASHED_FIELDS if name not in ("seq", "prev_hash")]
    for account_id in accounts:
        seq, prev = 0, GENESIS_HASH
        last: tuple | None = None  # type: ignore[type-arg]
        while True:
            stmt = sa.select(*cols).where(record.c.account_id == account_id)
            if last is not None:
                stmt = stmt.where(sa.tuple_(record.c.at, record.c.id) > sa.tuple_(*last))
            rows = bind.execute(stmt.order_by(record.c.at, record.c.id).limit(_PAGE)).all()
            if not rows:
                break
            updates = []
            for row in rows:
                seq += 1
                values = {**row._mapping, "seq": seq, "prev_hash": prev}
                prev = record_hash(values)
                updates.append({"rid": row.id, "s": seq, "p": values["prev_hash"], "h": prev})
            bind.execute(
                record.update()
                .where(record.c.id == sa.bindparam("rid"))
                .values(seq=sa.bindparam("s"), prev_hash=sa.bindparam("p"), hash=sa.bindparam("h")),
                updates,
            )
            last = (rows[-1].at, rows[-1].id)
        bind.execute(chain.insert().values(account_id=account_id, seq=seq, hash=prev))


def upgrade() -> None:
    op.add_column("audit_record", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.add_column("audit_record", sa.Column("prev_hash", sa.String(length=64), nullable=True))
    op.add_column("audit_record", sa.Column("hash", sa.String(length=64), nullable=True))
    op.create_table(
        "audit_chain",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["account.id"], name=op.f("fk_audit_chain_account_id_account"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_audit_chain")),
    )
    _chain_existing()
    op.create_unique_constraint(op.f("uq_audit_record_account_id_seq"), "audit_record", ["account_id", "seq"])
    op.create_index(
        "ix_audit_record_account_id_object_type_object_id",
        "audit_record",
        ["account_id", "object_type", "object_id"],
        unique=False,
    )
    op.create_index(
        "ix_audit_record_account_id_actor_id", "audit_record", ["account_id", "actor_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_audit_record_account_id_actor_id", table_name="audit_record")
    op.drop_index("ix_audit_record_account_id_object_type_object_id", table_name="audit_record")
    op.drop_constraint(op.f("uq_audit_record_account_id_seq"), "audit_record", type_="unique")
    op.drop_table("audit_chain")
    op.drop_column("audit_record", "hash")
    op.drop_column("audit_record", "prev_hash")
    op.drop_column("audit_record", "seq")
