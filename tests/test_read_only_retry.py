"""A connection that lands on a read-only standby (a fail-over, a balancer still checking its
servers) is dropped and the transaction re-run on a new connection, which reaches the writer."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.db.engine import create_engine, session_factory
from rpa_common.db.uow import is_read_only, retry_reason, run_in_transaction
from rpa_common.settings import Settings


async def test_a_write_on_a_read_only_connection_is_rerun_on_a_new_one(settings: Settings) -> None:
    engine = create_engine(settings, "tests")
    connects: list[int] = []
    armed = [False]
    errors: list[BaseException] = []

    @event.listens_for(engine.sync_engine, "connect")
    def _first_is_a_standby(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        connects.append(1)
        if not armed[0]:
            return
        armed[0] = False
        # The first connection behaves as a standby would: its writes fail as read-only. MariaDB:
        # a read-only session. PostgreSQL: the engine begins every transaction READ WRITE, which
        # overrides a session default, so the probe table's trigger raises the standby's SQLSTATE.
        cursor = dbapi_conn.cursor()
        if engine.dialect.name == "postgresql":
            cursor.execute("SET rpa_test.standby = 'on'")
        else:
            cursor.execute("SET SESSION TRANSACTION READ ONLY")
        cursor.close()

    name = f"ro-{uuid.uuid4().hex[:12]}"
    table = f"ro_probe_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(sa.text(f"CREATE TABLE {table} (name VARCHAR(100) PRIMARY KEY)"))
        if engine.dialect.name == "postgresql":
            await conn.execute(
                sa.text(
                    f"CREATE FUNCTION {table}_standby() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "IF current_setting('rpa_test.standby', true) = 'on' THEN "
                    "RAISE EXCEPTION 'cannot execute INSERT in a read-only transaction' "
                    "USING ERRCODE = '25006'; END IF; RETURN NEW; END $$"
                )
            )
            await conn.execute(
                sa.text(
                    f"CREATE TRIGGER {table}_standby BEFORE INSERT ON {table} "
                    f"FOR EACH ROW EXECUTE FUNCTION {table}_standby()"
                )
            )
    await engine.dispose()
    connects.clear()
    armed[0] = True

    async def work(session: AsyncSession) -> None:
        try:
            insert = f"INSERT INTO {table} (name) VALUES (:n)"  # noqa: S608 (the test's own table)
            await session.execute(sa.text(insert), {"n": name})
        except Exception as exc:
            errors.append(exc)
            raise

    try:
        await run_in_transaction(session_factory(engine), work, base_delay_s=0.01)
        used = len(connects)
        async with session_factory(engine)() as session:
            found = (await session.execute(sa.text(f"SELECT name FROM {table}"))).all()  # noqa: S608
    finally:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f"DROP TABLE {table}"))
            if engine.dialect.name == "postgresql":
                await conn.execute(sa.text(f"DROP FUNCTION {table}_standby()"))
        await engine.dispose()

    assert len(found) == 1, "the re-run on a writable connection stored the row once"
    assert len(errors) == 1 and is_read_only(errors[0]), errors
    assert retry_reason(errors[0]) is not None
    assert used == 2, "the standby's connection was dropped, not handed back to the pool"
