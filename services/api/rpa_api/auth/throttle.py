"""Slowing down repeated failed logins, in the ``login_throttle`` table so every API replica agrees.

Two keys count failures for each attempt: the username alone, and the username with the client
address. Past ``login_max_failures`` failures on the user+address key (and past
``USER_FAILURE_FACTOR`` times that on the user key, so that strangers spraying one username from many
addresses slow it down without locking its owner out at the first wave), logins are refused with 429
for ``login_lockout_s * 2**(n - max)`` seconds, capped at ``MAX_LOCKOUT_S``, even with the right
password. A success resets the user+address key; the user key forgets failures after a quiet
``FORGET_AFTER_S``.

Keys are hashes: the table never holds usernames or addresses, and a username that does not exist is
counted exactly like one that does (no way to tell them apart by the answers).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.db.engine import dialect_of
from rpa_common.models import LoginThrottle
from rpa_common.settings import Settings

MAX_LOCKOUT_S = 15 * 60
USER_FAILURE_FACTOR = 3
FORGET_AFTER_S = 60 * 60


@dataclass(frozen=True)
class ThrottleKey:
    key: str
    max_failures: int


def keys_for(settings: Settings, username: str, address: str | None) -> tuple[ThrottleKey, ThrottleKey]:
    """(user key, user+address key) of a login attempt."""
    name = username.strip().lower()
    user_key = "u:" + hashlib.sha256(name.encode()).hexdigest()
    addr_key = "ua:" + hashlib.sha256(f"{name}\0{address or '-'}".encode()).hexdigest()
    return (
        ThrottleKey(user_key, settings.login_max_failures * USER_FAILURE_FACTOR),
        ThrottleKey(addr_key, settings.login_max_failures),
    )


async def blocked_for(session: AsyncSession, keys: tuple[ThrottleKey, ...]) -> float:
    """Seconds until a login may be tried again (0: not blocked)."""
    now = datetime.now(UTC)
    rows = await session.execute(
        sa.select(LoginThrottle.blocked_until).where(LoginThrottle.key.in_([k.key for k in keys]))
    )
    until = [r[0] for r in rows if r[0] is not None and r[0] > now]
    return max(((u - now).total_seconds() for u in until), default=0.0)


def lockout_s(settings: Settings, failures: int, max_failures: int) -> float:
    if failures < max_failures:
        return 0.0
    return float(min(MAX_LOCKOUT_S, settings.login_lockout_s * 2 ** (failures - max_failures)))


async def _insert_ignore(session: AsyncSession, key: str, now: datetime) -> None:
    """Create the key's row unless it exists: a concurrent first failure on another replica must not fail."""
    values = {"key": key, "failures": 0, "last_failure_at": now, "blocked_until": None}
    if dialect_of(session) == "postgresql":
        await session.execute(postgresql.insert(LoginThrottle).values(values).on_conflict_do_nothing())
    else:
        # ON DUPLICATE KEY takes the row's exclusive lock at once (INSERT IGNORE would take a shared
        # one, and two failures upgrading their shared locks deadlock).
        stmt = mysql.insert(LoginThrottle).values(values)
        await session.execute(stmt.on_duplicate_key_update(failures=LoginThrottle.failures))


async def record_failure(session: AsyncSession, settings: Settings, keys: tuple[ThrottleKey, ...]) -> None:
    """Count one failure on each key (row-locked, so concurrent failures all count)."""
    now = datetime.now(UTC)
    for k in sorted(keys, key=lambda k: k.key):  # one lock order everywhere: no deadlock
        await _insert_ignore(session, k.key, now)
        row = (
            await session.execute(
                sa.select(LoginThrottle).where(LoginThrottle.key == k.key).with_for_update()
            )
        ).scalar_one()
        if row.failures and (now - row.last_failure_at).total_seconds() > FORGET_AFTER_S:
            row.failures = 0
        row.failures += 1
        row.last_failure_at = now
        delay = lockout_s(settings, row.failures, k.max_failures)
        row.blocked_until = now + timedelta(seconds=delay) if delay else None
    await session.flush()


async def reset(session: AsyncSession, key: ThrottleKey) -> None:
    await session.execute(sa.delete(LoginThrottle).where(LoginThrottle.key == key.key))
