"""The unit of work: the one place that commits, rolls back and re-runs a transaction.

A transaction is re-run, bounded and with backoff, only on the errors that mean "try again": the
connection was lost or refused, the server is shutting down or not ready yet, or the transaction lost
a race (deadlock, lock wait timeout, serialization failure). They are named in ``RETRY_SQLSTATES``
and ``RETRY_MYSQL_ERRORS``. A statement that ran out of time (PostgreSQL ``statement_timeout``,
MariaDB ``max_statement_time``, a client-side command timeout) is NOT re-run: the same statement
would most likely run out of time again, and re-running it multiplies the load that made it slow.
Such errors, and retryable ones that did not succeed in the attempts or time given, are what
``is_unavailable`` recognises: a service answers them "unavailable, try later" (HTTP 503).

A commit that failed with a lost connection may in fact have committed, so work run through here must
be idempotent: client-made ids, state guards, and "duplicate key means already done".
"""

from __future__ import annotations

import asyncio
import errno
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rpa_common import metrics

log = structlog.get_logger(__name__)

T = TypeVar("T")

RETRY_SQLSTATES: dict[str, str] = {
    "40001": "serialization_failure",
    "40P01": "deadlock_detected",
    "08000": "connection_exception",
    "08001": "sqlclient_unable_to_establish_sqlconnection",
    "08003": "connection_does_not_exist",
    "08004": "sqlserver_rejected_establishment_of_sqlconnection",
    "08006": "connection_failure",
    "57P01": "admin_shutdown",
    "57P02": "crash_shutdown",
    "57P03": "cannot_connect_now",
    "25006": "read_only_sql_transaction (a standby: a fail-over, or a balancer still checking)",
}
"""PostgreSQL SQLSTATEs after which the whole transaction is re-run."""

RETRY_MYSQL_ERRORS: dict[int, str] = {
    1205: "ER_LOCK_WAIT_TIMEOUT",
    1213: "ER_LOCK_DEADLOCK",
    1053: "ER_SERVER_SHUTDOWN",
    1047: "ER_UNKNOWN_COM_ERROR (Galera node not ready: WSREP has not yet prepared node)",
    1180: "ER_ERROR_DURING_COMMIT (Galera certification failure)",
    4031: "ER_CLIENT_INTERACTION_TIMEOUT (the server closed an idle connection)",
    2003: "CR_CONN_HOST_ERROR (can't connect)",
    2006: "CR_SERVER_GONE_ERROR",
    2013: "CR_SERVER_LOST (lost connection during query)",
    1290: "ER_OPTION_PREVENTS_STATEMENT (--read-only: a standby, not the writer)",
    1792: "ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION (a standby, not the writer)",
}
"""MariaDB error numbers after which the whole transaction is re-run."""

TIMEOUT_SQLSTATES: dict[str, str] = {"57014": "query_canceled (statement_timeout)"}
"""PostgreSQL SQLSTATEs of a statement that ran out of time: not re-run, answered as unavailable."""

TIMEOUT_MYSQL_ERRORS: dict[int, str] = {
    1317: "ER_QUERY_INTERRUPTED",
    1969: "ER_STATEMENT_TIMEOUT (max_statement_time exceeded)",
    3024: "ER_QUERY_TIMEOUT (max_execution_time exceeded)",
}
"""MariaDB/MySQL errors of a statement that ran out of time: not re-run, answered as unavailable."""


_RETRY_ERRNOS = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN})
"""Network errors other than ``ConnectionError`` that a fail-over shows for a moment."""


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


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError):
        return _sqlstate(exc) in TIMEOUT_SQLSTATES or _mysql_code(exc) in TIMEOUT_MYSQL_ERRORS
    # asyncpg's command timeout and a connect that never completes both surface as a bare
    # TimeoutError, and the pool's own wait as sqlalchemy.exc.TimeoutError.
    return isinstance(exc, (TimeoutError, PoolTimeoutError))


def retry_reason(exc: BaseException) -> str | None:
    """The name of the transient condition ``exc`` shows, or ``None`` when re-running would not help."""
    if _is_timeout(exc):
        return None
    if isinstance(exc, DBAPIError):
        state = _sqlstate(exc)
        if state in RETRY_SQLSTATES:
            return RETRY_SQLSTATES[state]
        code = _mysql_code(exc)
        if code in RETRY_MYSQL_ERRORS:
            return RETRY_MYSQL_ERRORS[code]
        if exc.connection_invalidated:
            return "connection_invalidated"
        return None
    if isinstance(exc, ConnectionError):  # refused, reset, aborted, broken pipe
        return type(exc).__name__
    if isinstance(exc, socket.gaierror):  # the database's name does not resolve during a fail-over
        return "name_resolution_failed"
    if isinstance(exc, OSError) and exc.errno in _RETRY_ERRNOS:
        return errno.errorcode[exc.errno]
    return None


def is_read_only(exc: BaseException) -> bool:
    """True when ``exc`` says the connection reached a read-only standby instead of the writer."""
    if not isinstance(exc, DBAPIError):
        return False
    return _sqlstate(exc) == "25006" or _mysql_code(exc) in (1290, 1792)


def is_retryable(exc: BaseException) -> bool:
    """True when re-running the whole transaction is the right answer to ``exc``."""
    return retry_reason(exc) is not None


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the database cannot serve now (answer 503), not that the work is wrong:
    a transient error that the attempts did not overcome, or a statement or connection out of time."""
    return is_retryable(exc) or _is_timeout(exc)


@asynccontextmanager
async def unit_of_work(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One transaction: commit on success, roll back on error. No retry (see ``run_in_transaction``)."""
    async with sessions() as session:
        try:
            yield session
            await session.commit()
        except asyncio.CancelledError:
            # Cut by a deadline (or shutdown): the connection may be stuck mid-statement, so a
            # rollback could wait forever; drop the connection instead of returning it to the pool.
            await session.invalidate()
            raise
        except BaseException as exc:
            if is_read_only(exc):
                # The balancer handed this connection to a standby: a re-run on it would meet the
                # same standby. Drop it, so the pool connects anew (and reaches the writer).
                await session.invalidate()
            else:
                await session.rollback()
            raise


async def _within(attempt: Awaitable[T], timeout_s: float) -> T:
    """``attempt``'s result, or ``TimeoutError`` once ``timeout_s`` has passed, without waiting for
    the cut attempt to clean up: closing a session whose connection stopped answering waits for the
    driver (seconds), and the caller has a deadline to keep. The clean-up finishes in the background.
    """
    task = asyncio.ensure_future(attempt)
    try:
        done, _ = await asyncio.wait({task}, timeout=max(timeout_s, 0.0))
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_forget)
        raise TimeoutError(f"the database did not answer within {timeout_s:.1f} s")
    return task.result()


def _forget(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not report it as never retrieved


async def run_in_transaction(
    sessions: async_sessionmaker[AsyncSession],
    work: Callable[[AsyncSession], Awaitable[T]],
    *,
    attempts: int = 5,
    base_delay_s: float = 0.05,
    deadline_s: float | None = None,
) -> T:
    """Run ``work`` in a transaction, re-running all of it on transient failures.

    ``deadline_s`` bounds the whole, re-runs and backoff included: an attempt still running at the
    deadline is cut (``TimeoutError``) and no attempt starts after it; the last error is raised.
    Without it, attempts are bounded only by the driver's own timeouts.
    """
    end = None if deadline_s is None else time.monotonic() + deadline_s

    async def once() -> T:
        async with unit_of_work(sessions) as session:
            return await work(session)

    for attempt in range(1, attempts + 1):
        try:
            if end is None:
                return await once()
            return await _within(once(), end - time.monotonic())
        except Exception as exc:
            reason = retry_reason(exc)
            if attempt >= attempts or reason is None:
                raise
            delay = base_delay_s * (2 ** (attempt - 1)) * (0.5 + random.random())
            if end is not None and time.monotonic() + delay >= end:
                raise
            metrics.DB_RETRIES.labels(metrics.service_name(), reason).inc()
            log.warning(
                "transaction.retry",
                attempt=attempt,
                error=type(exc).__name__,
                reason=reason,
                delay_s=round(delay, 3),
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
