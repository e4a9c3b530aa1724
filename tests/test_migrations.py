"""One alembic history for both databases: up, down, up again, and no drift from the models."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import create_async_engine

from rpa_common.db.admin import create_database, drop_database
from rpa_common.models import Base
from rpa_common.settings import normalize_db_url
from tests.conftest import (
    _with_db,
    admin_url_for,
    alembic_config,
    require_backend,
)


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
async def test_upgrade_downgrade_upgrade_and_no_drift(backend: str) -> None:
    require_backend(backend)
    admin = admin_url_for(backend)
    name = f"rpa_mig_{backend[:2]}_{uuid.uuid4().hex[:8]}"
    await create_database(admin, name)
    url = _with_db(admin, name)
    cfg = alembic_config(url)
    try:
        await asyncio.to_thread(command.upgrade, cfg, "head")
        await asyncio.to_thread(command.check, cfg)  # raises when autogenerate finds a difference
        await asyncio.to_thread(command.downgrade, cfg, "base")
        engine = create_async_engine(normalize_db_url(url))
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        await engine.dispose()
        assert set(tables) <= {"alembic_version"}, f"downgrade left tables: {tables}"
        await asyncio.to_thread(command.upgrade, cfg, "head")
        await asyncio.to_thread(command.check, cfg)
        engine = create_async_engine(normalize_db_url(url))
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        await engine.dispose()
        assert set(Base.metadata.tables) <= set(tables)
    finally:
        await drop_database(admin, name)
