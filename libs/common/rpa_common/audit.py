"""The append-only audit trail, as every service writes it (the API's ``kit.audit`` builds on it).

A record is added to the caller's session, so it commits or rolls back with the change it
describes. Secret-looking fields of ``changes`` are replaced by ``"***"`` before they are stored.

**The hash chain.** Each record of an account carries ``seq`` (its place in the account: 1, 2, 3...),
``prev_hash`` (the previous record's ``hash``; ``GENESIS_HASH`` for the first) and ``hash``, the
SHA-256 of a canonical JSON form of its content (``canonical``). They are given when the transaction
that wrote the record commits, by a hook on every SQLAlchemy session's commit (``seal``, installed by
``rpa_common.models.audit``): it locks the account's ``audit_chain`` row (the chain's head), last in
the transaction, takes the next numbers and updates the head. Any service that writes an
``AuditRecord`` through the ORM is therefore chained, whichever path it took; the lock is held only
for the commit's last statements. docs/design/audit.md says why this and not a background sealer.

``verify_account`` walks a chain and names the first broken link; ``python -m rpa_common.audit verify
[--account ID]`` runs it against the database of the settings (exit status 1 when a chain is broken).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from enum import Enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from rpa_common.models import Account, AuditRecord
from rpa_common.models.audit import GENESIS_HASH, PENDING_KEY, AuditChain
from rpa_common.models.enums import ActorType

SECRET_MARKERS = ("password", "secret", "key", "token", "credential")


def redact(changes: dict[str, Any] | None) -> dict[str, Any] | None:
    """Replace the value of every secret-looking field by ``"***"``, recursively."""
    if changes is None:
        return None
    out: dict[str, Any] = {}
    for name, value in changes.items():
        if any(marker in name.lower() for marker in SECRET_MARKERS):
            out[name] = "***"
        elif isinstance(value, dict):
            out[name] = redact(value)
        else:
            out[name] = value
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def add_audit_record(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    actor_type: ActorType,
    actor_id: uuid.UUID | None,
    actor_name: str | None,
    action: str,
    object_type: str,
    object_id: uuid.UUID | str | None,
    changes: dict[str, Any] | None = None,
    kind: str = "api",
    client_address: str | None = None,
    user_agent: str | None = None,
) -> AuditRecord:
    """Add one audit record to ``session``; it is inserted with the next flush and chained at commit."""
    record = AuditRecord(
        id=uuid.uuid4(),
        account_id=account_id,
        at=datetime.now(UTC),
        kind=kind,
        actor_type=actor_type,
        actor_id=actor_id,
        actor_name=(actor_name or "")[:200] or None,
        action=action,
        object_type=object_type,
        object_id=str(object_id) if object_id is not None else None,
        changes=_jsonable(redact(changes)),
        client_address=(client_address or "")[:100] or None,
        user_agent=(user_agent or "")[:500] or None,
    )
    session.add(record)
    return record


# The canonical form ---------------------------------------------------------------------------

HASH_VERSION = 1
HASHED_FIELDS = (
    "id",
    "account_id",
    "seq",
    "prev_hash",
    "at",
    "kind",
    "actor_type",
    "actor_id",
    "actor_name",
    "action",
    "object_type",
    "object_id",
    "changes",
    "client_address",
    "user_agent",
)
"""Every column of a record: what its hash covers (with ``"v": HASH_VERSION``)."""


def _canonical_value(value: Any) -> Any:
    if isinstance(value, datetime):
        # Stored with microseconds in UTC on both databases; a naive value (a plain Core read on
        # MariaDB) is UTC.
        aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return aware.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return _jsonable(value)


def canonical(values: Mapping[str, Any]) -> bytes:
    """The bytes a record's hash is taken over: its fields as JSON, keys sorted, no spaces, UTF-8."""
    doc = {name: _canonical_value(values[name]) for name in HASHED_FIELDS}
    doc["v"] = HASH_VERSION
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def record_hash(values: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``canonical(values)``; ``values`` maps every name of ``HASHED_FIELDS``."""
    return hashlib.sha256(canonical(values)).hexdigest()


def _values_of(record: AuditRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in HASHED_FIELDS}


# Sealing at commit ----------------------------------------------------------------------------

_UNSEALED = "rpa_audit_unsealed"
"""``session.info``: the records this transaction inserted, in insertion order."""
_PENDING = PENDING_KEY


def note_inserted(record: AuditRecord) -> None:
    """Mapper hook (``before_insert``): the record is inserted now, unsealed; seal it at commit."""
    session = sa.orm.object_session(record)
    if session is not None:
        session.info.setdefault(_UNSEALED, []).append(record)


def forget(session: Session, transaction: Any) -> None:
    """Session hook (``after_transaction_end``): a finished transaction leaves nothing to seal."""
    if transaction.parent is None:
        session.info.pop(_UNSEALED, None)
        session.info.pop(_PENDING, None)


def _lock_head(session: Session, account_id: uuid.UUID) -> tuple[int, str]:
    """The account's chain head ``(seq, hash)``, locked until the commit; created on first use."""
    select = (
        sa.select(AuditChain.seq, AuditChain.hash)
        .where(AuditChain.account_id == account_id)
        .with_for_update()
    )
    head = session.execute(select).first()
    if head is None:
        row = {"account_id": account_id, "seq": 0, "hash": GENESIS_HASH}
        insert: Any
        if session.get_bind().dialect.name == "postgresql":
            insert = postgresql.insert(AuditChain).values(row).on_conflict_do_nothing()
        else:
            insert = mysql.insert(AuditChain).values(row).prefix_with("IGNORE")
        session.execute(insert)
        head = session.execute(select).one()
    return int(head.seq), str(head.hash)


def seal(session: Session) -> None:
    """Session hook (``before_commit``): chain the records this transaction wrote.

    Everything pending is flushed first (the records with it, still unsealed), so the only locks
    taken after the chain heads are theirs: heads are locked last, in account order, which leaves
    no room for a deadlock between writers, and each head stays locked only for the few statements
    before the commit.
    """
    if session.in_nested_transaction():
        return  # a savepoint's release; the outer commit seals
    if not session.info.get(_PENDING) and not session.info.get(_UNSEALED):
        return
    session.flush()
    records = [
        r for r in session.info.get(_UNSEALED, ()) if sa.inspect(r).persistent and r.seq is None
    ]  # a record whose savepoint was rolled back is no longer persistent: it never happened
    by_account: dict[uuid.UUID, list[AuditRecord]] = {}
    for record in records:
        by_account.setdefault(record.account_id, []).append(record)
    for account_id in sorted(by_account):
        seq, prev = _lock_head(session, account_id)
        for record in by_account[account_id]:
            seq += 1
            record.seq = seq
            record.prev_hash = prev
            record.hash = prev = record_hash(_values_of(record))
        session.execute(
            sa.update(AuditChain).where(AuditChain.account_id == account_id).values(seq=seq, hash=prev)
        )
    session.flush()
    session.info.pop(_UNSEALED, None)
    session.info.pop(_PENDING, None)


# Verification ---------------------------------------------------------------------------------

VERIFY_PAGE = 2000


@dataclass(frozen=True)
class BrokenLink:
    """The first place where an account's chain does not hold."""

    record_id: uuid.UUID | None
    seq: int | None
    problem: str


@dataclass(frozen=True)
class ChainReport:
    """What ``verify_account`` found: ``broken`` is None when the chain holds."""

    account_id: uuid.UUID
    records: int
    """Records checked (up to the head read when the check started)."""
    head_seq: int
    head_hash: str
    broken: BrokenLink | None

    @property
    def ok(self) -> bool:
        return self.broken is None

    def as_dict(self) -> Any:
        out = asdict(self)
        out["ok"] = self.ok
        return _jsonable(out)


_COLUMNS = [getattr(AuditRecord, name) for name in HASHED_FIELDS] + [AuditRecord.hash]


async def verify_account(session: AsyncSession, account_id: uuid.UUID) -> ChainReport:
    """Walk the account's chain from seq 1 to its head and report the first broken link.

    The head is read first: records committed while the walk runs come after it and are left for
    the next check, so a busy account verifies as well as an idle one.
    """
    head = (
        await session.execute(
            sa.select(AuditChain.seq, AuditChain.hash).where(AuditChain.account_id == account_id)
        )
    ).first()
    head_seq, head_hash = (int(head.seq), str(head.hash)) if head is not None else (0, GENESIS_HASH)

    def report(records: int, broken: BrokenLink | None) -> ChainReport:
        return ChainReport(account_id, records, head_seq, head_hash, broken)

    expected, prev, checked = 1, GENESIS_HASH, 0
    while expected <= head_seq:
        rows = (
            await session.execute(
                sa.select(*_COLUMNS)
                .where(
                    AuditRecord.account_id == account_id,
                    AuditRecord.seq >= expected,
                    AuditRecord.seq <= head_seq,
                )
                .order_by(AuditRecord.seq)
                .limit(VERIFY_PAGE)
            )
        ).all()
        if not rows:
            return report(
                checked,
                BrokenLink(
                    None,
                    expected,
                    f"records {expected} to {head_seq} are missing: the head says the chain "
                    f"reaches seq {head_seq}",
                ),
            )
        for row in rows:
            values = dict(row._mapping)
            if row.seq != expected:
                return report(
                    checked,
                    BrokenLink(
                        row.id,
                        row.seq,
                        f"seq {row.seq} follows seq {expected - 1}: record {expected} is missing",
                    ),
                )
            if row.prev_hash != prev:
                return report(
                    checked,
                    BrokenLink(
                        row.id,
                        row.seq,
                        f"prev_hash {row.prev_hash} is not the hash of record {expected - 1} ({prev})",
                    ),
                )
            computed = record_hash(values)
            if row.hash != computed:
                return report(
                    checked,
                    BrokenLink(
                        row.id,
                        row.seq,
                        f"the content does not match its hash (stored {row.hash}, computed {computed}):"
                        " the record was changed",
                    ),
                )
            prev, expected, checked = row.hash, expected + 1, checked + 1
    if prev != head_hash:
        return report(
            checked,
            BrokenLink(None, head_seq, f"the head's hash {head_hash} is not the last record's ({prev})"),
        )
    stray = (
        await session.execute(
            sa.select(AuditRecord.id)
            .where(AuditRecord.account_id == account_id, AuditRecord.seq.is_(None))
            .limit(1)
        )
    ).first()
    if stray is not None:
        return report(
            checked,
            BrokenLink(
                stray.id, None, "the record has no place in the chain (no seq): it was written around it"
            ),
        )
    return report(checked, None)


async def accounts_with_chains(session: AsyncSession) -> list[uuid.UUID]:
    """Every account (each has a chain, empty until its first record)."""
    return list((await session.execute(sa.select(Account.id).order_by(Account.id))).scalars())


# The command ----------------------------------------------------------------------------------


async def _verify_command(account_ids: Sequence[uuid.UUID] | None) -> int:
    from rpa_common.db.engine import create_engine, session_factory
    from rpa_common.settings import get_settings

    engine = create_engine(get_settings(), "cli", pool_size=1)
    sessions = session_factory(engine)
    broken = 0
    total = 0
    try:
        async with sessions() as session:
            ids = list(account_ids) if account_ids else await accounts_with_chains(session)
            for account_id in ids:
                found = await session.get(Account, account_id)
                if found is None:
                    print(f"account {account_id}: no such account", file=sys.stderr)
                    return 2
                rep = await verify_account(session, account_id)
                await session.rollback()  # a fresh snapshot per account
                total += rep.records
                if rep.broken is None:
                    print(
                        f"OK      account {account_id}: {rep.records} records, head {rep.head_seq} {rep.head_hash}"
                    )
                else:
                    broken += 1
                    b = rep.broken
                    print(
                        f"BROKEN  account {account_id}: first broken link at record {b.record_id} "
                        f"seq {b.seq}: {b.problem}"
                    )
    finally:
        await engine.dispose()
    print(
        f"{'OK' if not broken else 'BROKEN'}: {len(ids)} account(s), {total} records checked, {broken} broken"
    )
    return 1 if broken else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rpa_common.audit",
        description="Audit trail tools; the database is the one of the RPA_* settings.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser(
        "verify", help="check every account's hash chain (or one's) and name the first broken link"
    )
    verify.add_argument("--account", type=uuid.UUID, action="append", help="an account id (repeatable)")
    args = parser.parse_args(argv)
    return asyncio.run(_verify_command(args.account))


if __name__ == "__main__":
    sys.exit(main())
