"""One alembic history for both databases: up, down, up again, and no drift from the models."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

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


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
async def test_records_written_before_the_chain_are_chained_by_the_upgrade(backend: str) -> None:
    from rpa_common.audit import verify_account
    from rpa_common.db.engine import session_factory
    from rpa_common.models import AuditRecord

    require_backend(backend)
    admin = admin_url_for(backend)
    name = f"rpa_mig_{backend[:2]}_{uuid.uuid4().hex[:8]}"
    await create_database(admin, name)
    url = _with_db(admin, name)
    cfg = alembic_config(url)
    try:
        await asyncio.to_thread(command.upgrade, cfg, "0007")
        engine = create_async_engine(normalize_db_url(url))
        account_id = uuid.uuid4()
        async with engine.begin() as conn:
            # The account table as revision 0007 has it (the model has columns of later revisions).
            account = sa.table(
                "account",
                *(
                    sa.column(c)
                    for c in ("id", "name", "description", "is_active", "created_at", "updated_at")
                ),
            )
            now = datetime(2026, 1, 1, tzinfo=UTC)
            await conn.execute(
                sa.insert(account).values(
                    id=account_id, name="old", description="", is_active=True, created_at=now, updated_at=now
                )
            )
            for n in range(3):
                await conn.execute(
                    sa.insert(AuditRecord.__table__).values(
                        id=uuid.uuid4(),
                        account_id=account_id,
                        at=datetime(2026, 1, n + 1, 0, 0, 0, 123456, tzinfo=UTC),
                        kind="api",
                        actor_type="user",
                        action="create",
                        object_type="robot",
                        object_id=f"r{n}",
                        changes={"name": f"r{n}", "n": 1.5},
                    )
                )
        await asyncio.to_thread(command.upgrade, cfg, "head")
        async with session_factory(engine)() as session:
            report = await verify_account(session, account_id)
        await engine.dispose()
        assert report.ok and report.records == report.head_seq == 3, report
    finally:
        await drop_database(admin, name)
