"""Create and drop whole databases on a server (tests, benchmarks, first installs)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from rpa_common.settings import normalize_db_url


def _quoted(dialect: str, name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"refusing database name {name!r}")  # names are ours, never a client's
    return f'"{name}"' if dialect == "postgresql" else f"`{name}`"


async def create_database(admin_url: str, name: str) -> None:
    """(Re)create ``name`` empty, on the server of ``admin_url``; utf8mb4 on MariaDB."""
    engine = create_async_engine(normalize_db_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            q = _quoted(engine.dialect.name, name)
            if engine.dialect.name == "postgresql":
                await conn.execute(sa.text(f"DROP DATABASE IF EXISTS {q} WITH (FORCE)"))
                await conn.execute(sa.text(f"CREATE DATABASE {q}"))
            else:
                await conn.execute(sa.text(f"DROP DATABASE IF EXISTS {q}"))
                await conn.execute(
                    sa.text(f"CREATE DATABASE {q} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
                )
    finally:
        await engine.dispose()


async def drop_database(admin_url: str, name: str) -> None:
    engine = create_async_engine(normalize_db_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            q = _quoted(engine.dialect.name, name)
            suffix = " WITH (FORCE)" if engine.dialect.name == "postgresql" else ""
            await conn.execute(sa.text(f"DROP DATABASE IF EXISTS {q}{suffix}"))
    finally:
        await engine.dispose()
