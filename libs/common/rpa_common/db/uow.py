"""The unit of work: the one place that commits, rolls back and re-runs a transaction.

A transaction is re-run, bounded and with backoff, on connection loss, deadlock (MariaDB 1213,
PostgreSQL 40P01), lock wait timeout (MariaDB 1205) and serialization failure (40001). A commit that
failed with a lost connection may in fact have committed, so work run through here must be
idempotent: client-made ids, state guards, and "duplicate key means already done".
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import structlog
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

log = structlog.get_logger(__name__)

T = TypeVar("T")

_RETRY_SQLSTATES = {"40001", "40P01", "08000", "08003", "08006", "08001", "08004", "57P01", "57P02", "57P03"}
# MariaDB: lock wait timeout, deadlock, server gone away, lost connection, can't connect, shutdown,
# WSREP (Galera) not ready / certification failure.
_RETRY_MYSQL_CODES = {1205, 1213, 2006, 2013, 2003, 1053, 1047, 1180, 4031}


def _sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def _mysql_code(exc: BaseException) -> int | None:
    orig = getattr(exc, "orig", None)
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


def is_retryable(exc: BaseException) -> bool:
    """True when re-running the whole transaction is the right answer to ``exc``."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (OperationalError, InterfaceError, DBAPIError)):
        if _sqlstate(exc) in _RETRY_SQLSTATES:
            return True
        if _mysql_code(exc) in _RETRY_MYSQL_CODES:
            return True
    return isinstance(exc, (ConnectionError, OSError)) and not isinstance(exc, FileNotFoundError)


@asynccontextmanager
async def unit_of_work(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One transaction: commit on success, roll back on error. No retry (see ``run_in_transaction``)."""
    async with sessions() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


async def run_in_transaction(
    sessions: async_sessionmaker[AsyncSession],
    work: Callable[[AsyncSession], Awaitable[T]],
    *,
    attempts: int = 5,
    base_delay_s: float = 0.05,
) -> T:
    """Run ``work`` in a transaction, re-running all of it on transient failures."""
    for attempt in range(1, attempts + 1):
        try:
            async with unit_of_work(sessions) as session:
                return await work(session)
        except Exception as exc:
            if attempt >= attempts or not is_retryable(exc):
                raise
            delay = base_delay_s * (2 ** (attempt - 1)) * (0.5 + random.random())
            log.warning(
                "transaction.retry", attempt=attempt, error=type(exc).__name__, delay_s=round(delay, 3)
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
