"""One engine factory keyed by process name: pool size, timeouts, pre-ping, application name."""

from __future__ import annotations

from typing import Literal

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from rpa_common.settings import Settings


def _patch_aiomysql_bytes() -> None:
    """aiomysql 0.3 imports ``escape_bytes_prefixed`` from PyMySQL, which PyMySQL 1.1+ replaced by a
    placeholder string, so every ``bytes`` parameter (encrypted secrets, package chunks) fails on
    MariaDB with "'str' object is not callable". Put back the same escaping PyMySQL itself uses."""
    try:
        import aiomysql.connection as aioconn
    except ImportError:  # pragma: no cover - PostgreSQL-only installs
        return
    if not callable(getattr(aioconn, "escape_bytes_prefixed", None)):
        aioconn.escape_bytes_prefixed = lambda value: f"_binary X'{value.hex()}'"


_patch_aiomysql_bytes()

ProcessName = Literal["api", "scheduler", "gateway", "coordinator", "migrations", "tests", "bench", "cli"]


_RETRIED_ON_DISCONNECT = frozenset({"api"})
"""Processes whose every database access goes through ``run_in_transaction``."""


def create_engine(settings: Settings, process: ProcessName, *, pool_size: int | None = None) -> AsyncEngine:
    """Build the async engine for ``process`` from ``settings``."""
    url = settings.database_url
    connect_args: dict[str, object] = {}
    if url.startswith("postgresql"):
        connect_args = {
            "server_settings": {"application_name": f"rpa-{process}", "timezone": "UTC"},
            "timeout": settings.db_connect_timeout_s,
            "command_timeout": 60,
        }
    else:
        connect_args = {
            "connect_timeout": int(max(1, settings.db_connect_timeout_s)),
            # MariaDB has no application_name: the program_name attribute shows in processlist.
            "program_name": f"rpa-{process}",
            "init_command": "SET time_zone = '+00:00'",
        }
    return create_async_engine(
        url,
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
        # A ping per checkout is a round trip per transaction. The API runs every access in the
        # retried unit of work, where a connection that died in the pool fails its first statement
        # (nothing written yet) and the transaction re-runs on a new one: the ping buys it nothing.
        pool_pre_ping=process not in _RETRIED_ON_DISCONNECT,
        pool_recycle=1800,
        # READ COMMITTED on both: MariaDB's default REPEATABLE READ takes gap locks that make
        # concurrent claims (SKIP LOCKED) and inserts block each other.
        isolation_level="READ COMMITTED",
        connect_args=connect_args,
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit (no hidden reloads)."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def dialect_of(engine_or_session: AsyncEngine | AsyncSession) -> str:
    """``postgresql`` or ``mysql`` (MariaDB)."""
    bind = engine_or_session.get_bind() if isinstance(engine_or_session, AsyncSession) else engine_or_session
    return bind.dialect.name
