"""The append-only audit trail and the head of each account's hash chain.

Every record of an account carries ``seq`` (1, 2, 3... in its account), the previous record's hash
and its own hash over a canonical form of its content (``rpa_common.audit.record_hash``). The values
are given when the transaction that wrote the record commits (``rpa_common.audit`` hooks every
session's commit), under the account's ``AuditChain`` row locked last: see docs/design/audit.md.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Mapped, Session, mapped_column

from rpa_common.models.base import Base, IdMixin, StrEnumType, account_fk, utcnow
from rpa_common.models.enums import ActorType

GENESIS_HASH = "0" * 64
"""The ``prev_hash`` of an account's first record."""
PENDING_KEY = "rpa_audit_pending"
"""``session.info``: set when an audit record was added to the session (it may not be flushed yet)."""


class AuditRecord(IdMixin, Base):
    __tablename__ = "audit_record"
    __table_args__ = (
        sa.Index("ix_audit_record_account_id_at", "account_id", "at"),
        # The chain's order, the listing's cursor; unique, so two writers can never fork a chain.
        sa.UniqueConstraint("account_id", "seq"),
        sa.Index(
            "ix_audit_record_account_id_object_type_object_id", "account_id", "object_type", "object_id"
        ),
        sa.Index("ix_audit_record_account_id_actor_id", "account_id", "actor_id"),
    )
    account_id: Mapped[uuid.UUID] = account_fk()
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(sa.String(50))
    actor_type: Mapped[ActorType] = mapped_column(StrEnumType(ActorType, 16))
    actor_id: Mapped[uuid.UUID | None]
    actor_name: Mapped[str | None] = mapped_column(sa.String(200))
    action: Mapped[str] = mapped_column(sa.String(50))
    object_type: Mapped[str] = mapped_column(sa.String(50))
    object_id: Mapped[str | None] = mapped_column(sa.String(100))
    changes: Mapped[dict[str, Any] | None]
    client_address: Mapped[str | None] = mapped_column(sa.String(100))
    user_agent: Mapped[str | None] = mapped_column(sa.String(500))
    # NULL only between the flush that inserted the record and the commit that seals it: a committed
    # record without them was written around the chain, and ``verify`` reports it.
    seq: Mapped[int | None] = mapped_column(sa.BigInteger)
    prev_hash: Mapped[str | None] = mapped_column(sa.String(64))
    hash: Mapped[str | None] = mapped_column(sa.String(64))


class AuditChain(Base):
    """The head of one account's chain: the last ``seq`` and ``hash`` given. Sealing locks this row,
    so appends of one account are serialised only for the moment of their commit."""

    __tablename__ = "audit_chain"
    account_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("account.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    hash: Mapped[str] = mapped_column(sa.String(64), default=GENESIS_HASH)


# Every session of every service chains the records it writes (rpa_common.audit.seal). The hooks
# import their bodies on first use: rpa_common.audit imports this module.


@event.listens_for(AuditRecord, "before_insert")
def _inserted(mapper: Any, connection: Any, target: AuditRecord) -> None:
    from rpa_common.audit import note_inserted

    note_inserted(target)


@event.listens_for(Session, "transient_to_pending")
def _added(session: Session, instance: object) -> None:
    if isinstance(instance, AuditRecord):
        session.info[PENDING_KEY] = True


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    if session.info:
        from rpa_common.audit import seal

        seal(session)


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: Any) -> None:
    if session.info and transaction.parent is None:
        from rpa_common.audit import forget

        forget(session, transaction)
