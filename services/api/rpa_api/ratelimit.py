"""API rate limits shared by every API replica, at a small cost per request.

Calls are counted per caller (an API key, an external app, a user's token: ``rate_limit_per_minute``)
and per client address for calls without credentials and the token endpoints
(``rate_limit_anonymous_per_minute``), in fixed one-minute windows kept in the ``rate_limit_window``
table, so the limit holds for the sum over all replicas.

Asking the database on every call would cost a round trip per request, so each replica keeps a local
view of every key's window (the total it last read, plus the calls it counted since) and spends a
slice of what is left without asking: up to ``1/SLACK_FRACTION`` of the remaining budget as it last
saw it, flushed to the database in the background within ``FLUSH_S``. Once that slice is spent, the
call that would go beyond it adds its count to the database in one upsert and reads the total back,
so near the limit every call is decided on the shared total. Far from the limit (nearly every call
of a well-behaved client) a call costs a dictionary look-up; at worst the replicas together can let
through ``(replicas - 1) * remaining / SLACK_FRACTION`` calls more than the limit, only while a burst
starts a window.

A refused call answers 429 problem+json with ``Retry-After``: the seconds until its window ends.

If the database cannot be reached, the limiter **fails open** on purpose, to the per-replica view:
each replica keeps counting locally and still refuses a caller past the limit on its own count, but
no longer sees the other replicas' calls. Failing closed would turn a database blip into a refusal of
every call, including those that need no database (and the API answers 503 for those that do).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
import structlog
from fastapi import Request
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.db.engine import dialect_of
from rpa_common.db.uow import run_in_transaction
from rpa_common.errors import TooManyRequests
from rpa_common.models import RateLimitWindow
from rpa_common.service import ServiceContext

log = structlog.get_logger(__name__)

WINDOW_S = 60
SLACK_FRACTION = 8
FLUSH_S = 0.2
DB_DEADLINE_S = 2.0
# Paths counted by client address even with credentials: how one gets (or tries) a token.
_ADDRESS_PATHS = frozenset({"/api/v1/auth/token", "/api/v1/auth/refresh", "/api/v1/auth/revoke"})


class RateLimited(TooManyRequests):
    def __init__(self, retry_after_s: int, limit: int) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(
            f"more than {limit} calls per minute; try again in {retry_after_s} s", retry_after=retry_after_s
        )


@dataclass
class _Window:
    number: int
    known: int = 0
    """The shared total as this replica last read it."""
    pending: int = 0
    """Calls counted here and not yet added to the shared total."""
    flush: asyncio.Task[None] | None = field(default=None, repr=False)


class RateLimiter:
    def __init__(
        self, window_s: int = WINDOW_S, slack_fraction: int = SLACK_FRACTION, flush_s: float = FLUSH_S
    ):
        self.window_s = window_s
        self.slack_fraction = slack_fraction
        self.flush_s = flush_s
        self._windows: dict[str, _Window] = {}
        self._swept: int = -1
        self.failing = False

    def _retry_after(self, number: int) -> int:
        return max(1, math.ceil((number + 1) * self.window_s - time.time()))

    async def hit(self, ctx: ServiceContext, key: str, limit: int) -> None:
        """Count one call of ``key``; ``RateLimited`` (429) beyond ``limit`` calls in the window."""
        if limit <= 0:
            return
        number = int(time.time() // self.window_s)
        w = self._windows.get(key)
        if w is None or w.number != number:
            if len(self._windows) > 100_000:
                self._windows.clear()
            w = self._windows[key] = _Window(number)
        if w.known + w.pending >= limit:
            raise RateLimited(self._retry_after(number), limit)
        if w.pending < (limit - w.known) // self.slack_fraction:
            w.pending += 1
            if w.flush is None:
                w.flush = asyncio.create_task(self._flush_later(ctx, key, w))
            return
        n, w.pending = w.pending + 1, 0
        result = await self._add(ctx, key, w, n, limit)
        if result is None:  # the database is out of reach: this replica's count decides
            w.pending += n
            if w.known + w.pending > limit:
                w.pending -= 1
                raise RateLimited(self._retry_after(number), limit)
            return
        total, refused = result
        w.known = max(w.known, total)
        if refused:
            raise RateLimited(self._retry_after(number), limit)

    async def _flush_later(self, ctx: ServiceContext, key: str, w: _Window) -> None:
        await asyncio.sleep(self.flush_s)
        w.flush = None
        n, w.pending = w.pending, 0
        if n:
            result = await self._add(ctx, key, w, n, None)
            if result is None:
                w.pending += n
            else:
                w.known = max(w.known, result[0])

    async def _add(
        self, ctx: ServiceContext, key: str, w: _Window, n: int, limit: int | None
    ) -> tuple[int, bool] | None:
        """Add ``n`` calls to the shared window: (its total, whether the last call is refused); a
        refused call is not counted. None if the database cannot be reached."""
        row_key = f"{key}:{w.number}"
        expires = datetime.fromtimestamp((w.number + 2) * self.window_s, UTC)
        sweep = self._swept != w.number

        async def work(session: AsyncSession) -> tuple[int, bool]:
            table = RateLimitWindow.__table__
            if dialect_of(session) == "postgresql":
                pg_stmt = postgresql.insert(RateLimitWindow).values(key=row_key, hits=n, expires_at=expires)
                total = (
                    await session.execute(
                        pg_stmt.on_conflict_do_update(
                            index_elements=["key"], set_={"hits": table.c.hits + n}
                        ).returning(table.c.hits)
                    )
                ).scalar_one()
            else:
                my_stmt = mysql.insert(RateLimitWindow).values(key=row_key, hits=n, expires_at=expires)
                await session.execute(my_stmt.on_duplicate_key_update(hits=table.c.hits + n))
                total = (
                    await session.execute(sa.select(table.c.hits).where(table.c.key == row_key))
                ).scalar_one()
            refused = limit is not None and total > limit
            if refused:
                # The refused call does not count: the others' budget stays the limit.
                await session.execute(
                    sa.update(RateLimitWindow).where(table.c.key == row_key).values(hits=table.c.hits - 1)
                )
                total -= 1
            if sweep:
                await session.execute(
                    sa.delete(RateLimitWindow).where(
                        table.c.expires_at < datetime.now(UTC) - timedelta(seconds=1)
                    )
                )
            return int(total), refused

        try:
            result = await run_in_transaction(ctx.sessions, work, attempts=2, deadline_s=DB_DEADLINE_S)
        except Exception as exc:
            if not self.failing:
                log.warning(
                    "ratelimit.unavailable", error=type(exc).__name__, policy="fail open, per replica"
                )
            self.failing = True
            return None
        self.failing = False
        if sweep:
            self._swept = w.number
        return result


def address_key(address: str | None) -> str:
    return "a:" + hashlib.sha256((address or "-").encode()).hexdigest()[:40]


def principal_key(kind: str, ident: object) -> str:
    return f"{kind}:{ident}"


def limiter_of(request: Request) -> RateLimiter | None:
    limiter: RateLimiter | None = getattr(request.app.state, "limiter", None)
    return limiter


async def limit_anonymous(request: Request) -> None:
    """Router dependency: calls without credentials, and the token endpoints, count per address."""
    limiter = limiter_of(request)
    if limiter is None:
        return
    if "authorization" in request.headers and request.url.path not in _ADDRESS_PATHS:
        return  # counted per caller once authenticated (deps.authenticate)
    ctx: ServiceContext = request.app.state.ctx
    address = request.client.host if request.client else None
    await limiter.hit(ctx, address_key(address), ctx.settings.rate_limit_anonymous_per_minute)
