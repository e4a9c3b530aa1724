"""Passwords of credential resources at rest: envelope encryption under rotatable master keys.

Each password is encrypted with AES-256-GCM under a fresh 256-bit *data key* of its own; the account
id, the resource id and the value id are its associated data, so a ciphertext copied to another
credential or another account does not decrypt. The data key is stored *wrapped*: encrypted with
AES-256-GCM under a *master key*, whose id is stored next to it (``resource_value.master_key_id``).

Master keys come from the settings: ``RPA_CREDENTIALS_MASTER_KEYS`` (``id:base64,id:base64``) or the
file named by ``RPA_CREDENTIALS_MASTER_KEYS_FILE`` (the same list, one per line or comma-separated).
The first key wraps new data keys; every key listed unwraps. Outside production, with no key given,
one key ``dev`` is derived from ``RPA_SECRET_KEY`` (as ``security.Encryptor`` does); in production a
service refuses to start without an explicit key.

At start (``check_at_start``), the API and the gateway prove their keys against the database: every
master key id that stored data keys use must be configured, and each configured key must open its
key-check record (``master_key_check``, written the first time a key id is seen). A wrong or missing
key stops the service with ``MasterKeyError`` and a message naming the key id, never the key.

Rotation (``python -m rpa_common.credentials rotate``) re-wraps every data key under the first
master key, in small batches, each its own transaction with the rows locked and every update guarded
by the wrapped key it read; the passwords' ciphertexts do not change. It can run while the services
run (they hold the old key too until it finishes) and is safe to re-run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rpa_common.db.uow import is_unavailable, run_in_transaction
from rpa_common.models import MasterKeyCheck, ResourceValue
from rpa_common.settings import Settings

log = structlog.get_logger(__name__)

DEV_KEY_ID = "dev"
KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_NONCE = 12
_CHECK_PLAINTEXT = b"rpa master key check v1"


class MasterKeyError(Exception):
    """The master keys are missing, malformed or wrong: the service must not start.

    The message names key ids and settings, never key material.
    """


class CredentialUnreadable(Exception):
    """A stored password does not decrypt (damaged row, or its master key is not configured)."""


# Keys -------------------------------------------------------------------------------------------


def parse_master_keys(raw: str, source: str = "RPA_CREDENTIALS_MASTER_KEYS") -> list[tuple[str, bytes]]:
    """``id:base64`` items (comma- or line-separated) as ``(id, 32-byte key)``; ``MasterKeyError``
    naming the item's position and id (never its key) when one is malformed."""
    keys: list[tuple[str, bytes]] = []
    items = [
        item.strip() for item in re.split(r"[,\n]", raw) if item.strip() and not item.strip().startswith("#")
    ]
    for n, item in enumerate(items, 1):
        key_id, sep, b64 = item.partition(":")
        key_id = key_id.strip()
        if not sep or not KEY_ID.match(key_id):
            raise MasterKeyError(
                f"{source}: item {n} is not 'id:base64-key' with an id of 1-64 letters, digits, '_', '.', '-'"
            )
        try:
            key = base64.b64decode(b64.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise MasterKeyError(f"{source}: master key {key_id!r} is not valid base64") from None
        if len(key) != 32:
            raise MasterKeyError(
                f"{source}: master key {key_id!r} must be 32 bytes (256 bits), got {len(key)}"
            )
        if any(k == key_id for k, _ in keys):
            raise MasterKeyError(f"{source}: master key id {key_id!r} is listed twice")
        keys.append((key_id, key))
    return keys


def new_master_key() -> str:
    """A fresh master key as base64 (for ``python -m rpa_common.credentials new-key``)."""
    return base64.b64encode(os.urandom(32)).decode()


class Keyring:
    """The configured master keys; the first one wraps. Never prints its keys."""

    def __init__(self, keys: list[tuple[str, bytes]], *, derived: bool = False) -> None:
        if not keys:
            raise MasterKeyError("no credentials master key is configured")
        self._keys = {key_id: AESGCM(key) for key_id, key in keys}
        self.current_id = keys[0][0]
        self.key_ids = tuple(key_id for key_id, _ in keys)
        self.derived = derived
        self.checked = False

    def __repr__(self) -> str:
        return f"Keyring(key_ids={self.key_ids!r}, derived={self.derived})"

    def _aead(self, key_id: str) -> AESGCM:
        aead = self._keys.get(key_id)
        if aead is None:
            raise CredentialUnreadable(f"master key {key_id!r} is not configured")
        return aead

    @staticmethod
    def _wrap_aad(key_id: str, account_id: uuid.UUID, value_id: uuid.UUID) -> bytes:
        return b"rpa-data-key/v1|" + key_id.encode() + b"|" + account_id.bytes + value_id.bytes

    def wrap(self, data_key: bytes, *, account_id: uuid.UUID, value_id: uuid.UUID) -> tuple[bytes, str]:
        """``(wrapped, master key id)``: ``data_key`` under the current master key."""
        nonce = os.urandom(_NONCE)
        aad = self._wrap_aad(self.current_id, account_id, value_id)
        return nonce + self._keys[self.current_id].encrypt(nonce, data_key, aad), self.current_id

    def unwrap(self, wrapped: bytes, key_id: str, *, account_id: uuid.UUID, value_id: uuid.UUID) -> bytes:
        aead = self._aead(key_id)
        try:
            return aead.decrypt(
                wrapped[:_NONCE], wrapped[_NONCE:], self._wrap_aad(key_id, account_id, value_id)
            )
        except (InvalidTag, ValueError):
            raise CredentialUnreadable(f"a data key does not unwrap under master key {key_id!r}") from None

    def check_record(self, key_id: str) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead(key_id).encrypt(
            nonce, _CHECK_PLAINTEXT, b"rpa-key-check/v1|" + key_id.encode()
        )

    def opens_check(self, key_id: str, blob: bytes) -> bool:
        try:
            found = self._aead(key_id).decrypt(
                blob[:_NONCE], blob[_NONCE:], b"rpa-key-check/v1|" + key_id.encode()
            )
        except (InvalidTag, ValueError):
            return False
        return found == _CHECK_PLAINTEXT


_KEYRINGS: dict[tuple[Any, ...], Keyring] = {}


def keyring_from_settings(settings: Settings) -> Keyring:
    """The keyring the settings describe (cached per process); ``MasterKeyError`` when there is none
    in production, when both the variable and the file are given, or when a key is malformed."""
    raw = settings.credentials_master_keys.get_secret_value()
    path = settings.credentials_master_keys_file
    secret = settings.secret_key.get_secret_value()
    cache_key = (
        settings.environment,
        hashlib.sha256(raw.encode()).digest(),
        path,
        hashlib.sha256(secret.encode()).digest(),
    )
    found = _KEYRINGS.get(cache_key)
    if found is not None:
        return found
    if raw.strip() and path:
        raise MasterKeyError("set RPA_CREDENTIALS_MASTER_KEYS or RPA_CREDENTIALS_MASTER_KEYS_FILE, not both")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise MasterKeyError(
                f"RPA_CREDENTIALS_MASTER_KEYS_FILE {path!r} cannot be read: {exc.strerror}"
            ) from None
        keys = parse_master_keys(text, f"RPA_CREDENTIALS_MASTER_KEYS_FILE {path!r}")
        if not keys:
            raise MasterKeyError(f"RPA_CREDENTIALS_MASTER_KEYS_FILE {path!r} holds no key")
        ring = Keyring(keys)
    elif raw.strip():
        ring = Keyring(parse_master_keys(raw))
    elif settings.environment == "production":
        raise MasterKeyError(
            "no credentials master key: production needs RPA_CREDENTIALS_MASTER_KEYS or "
            "RPA_CREDENTIALS_MASTER_KEYS_FILE (generate one with `python -m rpa_common.credentials new-key`)"
        )
    else:
        derived = hashlib.sha256(b"rpa-credentials-master:" + secret.encode()).digest()
        ring = Keyring([(DEV_KEY_ID, derived)], derived=True)
    _KEYRINGS[cache_key] = ring
    return ring


# The check against the database ------------------------------------------------------------------


async def _verify(session: AsyncSession, ring: Keyring) -> list[str]:
    """Raise ``MasterKeyError`` when a key is wrong or missing; return the configured key ids that
    have no key-check record yet (proven against a stored data key where one exists)."""
    used: set[str] = {
        key_id
        for key_id in (
            await session.execute(
                sa.select(ResourceValue.master_key_id)
                .where(ResourceValue.master_key_id.is_not(None))
                .distinct()
            )
        )
        .scalars()
        .all()
        if key_id is not None
    }
    missing = sorted(used - set(ring.key_ids))
    if missing:
        raise MasterKeyError(
            f"stored credentials are wrapped by master key(s) {', '.join(map(repr, missing))}, which the "
            f"configured keys ({', '.join(map(repr, ring.key_ids))}) do not include: add them back to "
            "RPA_CREDENTIALS_MASTER_KEYS (a rotation keeps the old key until it has finished)"
        )
    checks = {
        r.key_id: r.check_encrypted
        for r in await session.execute(
            sa.select(MasterKeyCheck.key_id, MasterKeyCheck.check_encrypted).where(
                MasterKeyCheck.key_id.in_(ring.key_ids)
            )
        )
    }
    unchecked = []
    for key_id in ring.key_ids:
        blob = checks.get(key_id)
        if blob is not None:
            if not ring.opens_check(key_id, blob):
                raise MasterKeyError(
                    f"credentials master key {key_id!r} is wrong: it does not open the key-check record "
                    f"that key id {key_id!r} wrote when it was first used"
                    + (" (the dev key is derived from RPA_SECRET_KEY, which changed)" if ring.derived else "")
                )
            continue
        if key_id in used:
            sample = (
                await session.execute(
                    sa.select(ResourceValue.id, ResourceValue.account_id, ResourceValue.data_key_wrapped)
                    .where(ResourceValue.master_key_id == key_id, ResourceValue.data_key_wrapped.is_not(None))
                    .limit(1)
                )
            ).first()
            if sample is not None:
                try:
                    ring.unwrap(
                        sample.data_key_wrapped, key_id, account_id=sample.account_id, value_id=sample.id
                    )
                except CredentialUnreadable:
                    raise MasterKeyError(
                        f"credentials master key {key_id!r} is wrong: it does not unwrap the stored data keys"
                    ) from None
        unchecked.append(key_id)
    return unchecked


async def ensure_checked(session: AsyncSession, ring: Keyring) -> None:
    """Prove the keyring against the database once per process, in ``session``; writes the missing
    key-check records (a concurrent writer of the same record is fine: it is then read back)."""
    if ring.checked:
        return
    for key_id in await _verify(session, ring):
        try:
            async with session.begin_nested():
                session.add(MasterKeyCheck(key_id=key_id, check_encrypted=ring.check_record(key_id)))
        except IntegrityError:
            blob = await session.scalar(
                sa.select(MasterKeyCheck.check_encrypted).where(MasterKeyCheck.key_id == key_id)
            )
            if blob is None or not ring.opens_check(key_id, blob):
                raise MasterKeyError(f"credentials master key {key_id!r} is wrong") from None
    ring.checked = True


START_CHECK_DEADLINE_S = 30.0


async def check_at_start(settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> Keyring:
    """The keyring of a starting service, proven against the database: ``MasterKeyError`` (stop the
    service) for a missing or wrong key. A database that cannot be reached within the deadline defers
    the proof to the first credential read or write (``ensure_checked``) instead of keeping the
    service down: the keys are then checked before any password is encrypted or revealed."""
    ring = keyring_from_settings(settings)
    try:
        await run_in_transaction(
            sessions,
            lambda session: ensure_checked(session, ring),
            attempts=max(settings.db_retry_attempts, 3),
            deadline_s=START_CHECK_DEADLINE_S,
        )
    except MasterKeyError:
        raise
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        log.warning("credentials.key_check_deferred", error=type(exc).__name__)
    else:
        log.info("credentials.keys_checked", key_ids=list(ring.key_ids), current=ring.current_id)
    return ring


# Sealing and opening one password ------------------------------------------------------------------


def _secret_aad(account_id: uuid.UUID, resource_id: uuid.UUID, value_id: uuid.UUID) -> bytes:
    return b"rpa-credential/v1|" + account_id.bytes + resource_id.bytes + value_id.bytes


async def seal_password(
    session: AsyncSession, settings: Settings, value: ResourceValue, password: str
) -> None:
    """Encrypt ``password`` into ``value``'s columns under a fresh data key (``value.id``,
    ``account_id`` and ``resource_id`` must be set: they are bound as associated data)."""
    ring = keyring_from_settings(settings)
    await ensure_checked(session, ring)
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(_NONCE)
    value.secret_encrypted = AESGCM(data_key).encrypt(
        nonce, password.encode(), _secret_aad(value.account_id, value.resource_id, value.id)
    )
    value.secret_nonce = nonce
    value.data_key_wrapped, value.master_key_id = ring.wrap(
        data_key, account_id=value.account_id, value_id=value.id
    )


def open_password(
    ring: Keyring,
    *,
    account_id: uuid.UUID,
    resource_id: uuid.UUID,
    value_id: uuid.UUID,
    secret_encrypted: bytes | None,
    secret_nonce: bytes | None,
    data_key_wrapped: bytes | None,
    master_key_id: str | None,
) -> str:
    """The clear password of one stored value; ``CredentialUnreadable`` if it does not decrypt."""
    if secret_encrypted is None or secret_nonce is None or data_key_wrapped is None or master_key_id is None:
        raise CredentialUnreadable("no password is stored")
    data_key = ring.unwrap(data_key_wrapped, master_key_id, account_id=account_id, value_id=value_id)
    try:
        clear = AESGCM(data_key).decrypt(
            secret_nonce, secret_encrypted, _secret_aad(account_id, resource_id, value_id)
        )
    except (InvalidTag, ValueError):
        raise CredentialUnreadable("the stored password does not decrypt for this credential") from None
    return clear.decode()


async def password_of(session: AsyncSession, settings: Settings, value: ResourceValue) -> str:
    """The clear password of ``value`` (``CredentialUnreadable`` if it does not decrypt)."""
    ring = keyring_from_settings(settings)
    await ensure_checked(session, ring)
    return open_password(
        ring,
        account_id=value.account_id,
        resource_id=value.resource_id,
        value_id=value.id,
        secret_encrypted=value.secret_encrypted,
        secret_nonce=value.secret_nonce,
        data_key_wrapped=value.data_key_wrapped,
        master_key_id=value.master_key_id,
    )


# Rotation ------------------------------------------------------------------------------------------


@dataclass
class RotationReport:
    total: int = 0
    rotated: int = 0
    failed: int = 0
    remaining: int = 0


def _pending(ring: Keyring) -> sa.ColumnElement[bool]:
    return sa.and_(
        ResourceValue.data_key_wrapped.is_not(None), ResourceValue.master_key_id != ring.current_id
    )


async def rotate(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    *,
    batch_size: int = 100,
    pause_s: float = 0.0,
    progress: Callable[[RotationReport], None] | None = None,
) -> RotationReport:
    """Re-wrap every data key not under the first master key, ``batch_size`` rows per transaction.

    Each batch locks its rows (``FOR UPDATE``, in id order) and updates each only if it still holds
    the wrapped key read (a person who set a new password meanwhile already wrote it under the
    current key). Readers never wait on it and read either wrapping (both keys are configured).
    A row whose data key does not unwrap is counted as failed and left as it is.
    """
    ring = keyring_from_settings(settings)
    await run_in_transaction(sessions, lambda session: ensure_checked(session, ring))

    async def count(session: AsyncSession) -> int:
        return int(
            await session.scalar(sa.select(sa.func.count()).select_from(ResourceValue).where(_pending(ring)))
            or 0
        )

    report = RotationReport(total=await run_in_transaction(sessions, count))
    if progress:
        progress(report)
    failed: set[uuid.UUID] = set()
    after: uuid.UUID | None = None

    async def batch(session: AsyncSession) -> tuple[int, list[uuid.UUID], uuid.UUID | None]:
        stmt = (
            sa.select(
                ResourceValue.id,
                ResourceValue.account_id,
                ResourceValue.data_key_wrapped,
                ResourceValue.master_key_id,
            )
            .where(_pending(ring))
            .order_by(ResourceValue.id)
            .limit(batch_size)
            .with_for_update()
        )
        if after is not None:
            stmt = stmt.where(ResourceValue.id > after)
        rows = (await session.execute(stmt)).all()
        done = 0
        bad: list[uuid.UUID] = []
        for row in rows:
            try:
                data_key = ring.unwrap(
                    row.data_key_wrapped, row.master_key_id, account_id=row.account_id, value_id=row.id
                )
            except CredentialUnreadable:
                bad.append(row.id)
                continue
            wrapped, key_id = ring.wrap(data_key, account_id=row.account_id, value_id=row.id)
            result = await session.execute(
                sa.update(ResourceValue)
                .where(
                    ResourceValue.id == row.id,
                    ResourceValue.master_key_id == row.master_key_id,
                    ResourceValue.data_key_wrapped == row.data_key_wrapped,
                )
                .values(data_key_wrapped=wrapped, master_key_id=key_id)
                .execution_options(synchronize_session=False)
            )
            done += int(result.rowcount or 0)  # type: ignore[attr-defined]
        return done, bad, rows[-1].id if rows else None

    while True:
        done, bad, last = await run_in_transaction(sessions, batch)
        if last is None:
            break
        after = last
        report.rotated += done
        failed.update(bad)
        report.failed = len(failed)
        if progress:
            progress(report)
        if pause_s:
            await asyncio.sleep(pause_s)
    report.remaining = await run_in_transaction(sessions, count)
    if progress:
        progress(report)
    return report


# Command line ------------------------------------------------------------------------------------


def _print_progress(report: RotationReport) -> None:
    pct = 100.0 if report.total == 0 else 100.0 * report.rotated / report.total
    print(
        f"rotated {report.rotated} of {report.total} data keys ({pct:.0f}%), {report.failed} failed",
        flush=True,
    )


async def _run_rotate(settings: Settings, batch_size: int, pause_s: float) -> int:
    from rpa_common.db.engine import create_engine, session_factory

    engine = create_engine(settings, "cli", pool_size=1)
    try:
        ring = keyring_from_settings(settings)
        print(
            f"re-wrapping data keys under master key {ring.current_id!r} (configured: {', '.join(ring.key_ids)})"
        )
        report = await rotate(
            session_factory(engine),
            settings,
            batch_size=batch_size,
            pause_s=pause_s,
            progress=_print_progress,
        )
    finally:
        await engine.dispose()
    if report.failed or report.remaining:
        print(
            f"rotation incomplete: {report.failed} data key(s) did not unwrap, {report.remaining} not under "
            f"{ring.current_id!r}; keep the old keys configured",
            file=sys.stderr,
        )
        return 1
    print(f"rotation done: every data key is under {ring.current_id!r}; other master keys may now be removed")
    return 0


async def _run_check(settings: Settings, *, quiet: bool = False) -> int:
    from rpa_common.db.engine import create_engine, session_factory

    engine = create_engine(settings, "cli", pool_size=1)
    try:
        ring = await check_at_start(settings, session_factory(engine))
    finally:
        await engine.dispose()
    if not quiet:
        print(f"master keys ok: {', '.join(ring.key_ids)} (current: {ring.current_id})")
    return 0


def preflight(settings: Settings) -> None:
    """Before a service serves: prove the master keys, or print why not and exit with status 2.

    Run by ``python -m rpa_api serve`` (and the gateway) before the server starts its workers, so a
    wrong key stops the process at once instead of a worker supervisor restarting workers forever.
    """
    try:
        asyncio.run(_run_check(settings, quiet=True))
    except MasterKeyError as exc:
        print(f"error: credentials master key: {exc}", file=sys.stderr, flush=True)
        log.error("credentials.master_key_refused", error=str(exc))
        sys.exit(2)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rpa_common.credentials", description="Credentials master keys: check, rotate, new key"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rot = sub.add_parser(
        "rotate", help="re-wrap every data key under the first master key (online, re-runnable)"
    )
    rot.add_argument("--batch-size", type=int, default=100, help="data keys per transaction (default 100)")
    rot.add_argument("--pause-ms", type=float, default=0.0, help="pause between batches (default 0)")
    sub.add_parser("check", help="prove the configured master keys against the database")
    sub.add_parser("new-key", help="print a fresh random master key (base64)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.command == "new-key":
        print(new_master_key())
        return 0
    from rpa_common.settings import get_settings

    settings = get_settings()
    try:
        if args.command == "rotate":
            if args.batch_size < 1:
                parser.error("--batch-size must be at least 1")
            return asyncio.run(_run_rotate(settings, args.batch_size, args.pause_ms / 1000))
        return asyncio.run(_run_check(settings))
    except MasterKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
