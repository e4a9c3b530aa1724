"""`python -m rpa_common.dbsetup`: the deployment's own database and accounts, idempotently."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from urllib.parse import urlsplit

import aiomysql
import asyncpg
import pytest

from rpa_common.dbsetup import SetupError, setup
from rpa_common.settings import Settings
from tests.conftest import ROOT, admin_url_for


def _settings(backend: str, **values: object) -> Settings:
    admin = urlsplit(admin_url_for(backend))
    base: dict[str, object] = {
        "environment": "test",
        "db_driver": backend,
        "db_host": admin.hostname or "127.0.0.1",
        "db_port": admin.port,
        "db_admin_user": admin.username,
        "db_name": f"rpa_setup_{os.getpid()}",
        "db_user": f"rpa_setup_{os.getpid()}",
    }
    base.update(values)
    return Settings(**base)  # type: ignore[arg-type]


async def _drop(settings: Settings) -> None:
    if settings.db_driver == "mariadb":
        conn = await aiomysql.connect(
            host=settings.db_host, port=settings.db_port or 3306, user=settings.db_admin_user, autocommit=True
        )
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{settings.db_name}`")
            await cur.execute(f"DROP USER IF EXISTS '{settings.db_user}'@'%'")
            await cur.execute(f"DROP USER IF EXISTS '{settings.dbcheck_user}'@'%'")
        conn.close()
    else:
        conn = await asyncpg.connect(
            host=settings.db_host,
            port=settings.db_port or 5432,
            user=settings.db_admin_user,
            database="postgres",
        )
        await conn.execute(f'DROP DATABASE IF EXISTS "{settings.db_name}"')
        await conn.execute(f'DROP ROLE IF EXISTS "{settings.db_user}"')
        await conn.close()


async def test_setup_creates_the_account_and_database_once(backend: str) -> None:
    first = _settings(
        backend, db_password="first-Pass", dbcheck_user=f"rpa_chk_{os.getpid()}", dbcheck_password="chk"
    )
    await _drop(first)
    try:
        done = await setup(first)
        assert any(first.db_name in line for line in done)
        again = _settings(
            backend, db_password="second-Pass", dbcheck_user=first.dbcheck_user, dbcheck_password="chk"
        )
        await setup(again)  # idempotent; the password is set again
        if backend == "mariadb":
            conn = await aiomysql.connect(
                host=again.db_host,
                port=again.db_port or 3306,
                user=again.db_user,
                password="second-Pass",
                db=again.db_name,
            )
            async with conn.cursor() as cur:
                await cur.execute("CREATE TABLE t (id INT PRIMARY KEY)")  # may work in its database
                await cur.execute("SHOW DATABASES")
                seen = {row[0] for row in await cur.fetchall()}
            conn.close()
            assert seen == {"information_schema", again.db_name}  # and sees nothing else
            with pytest.raises(aiomysql.OperationalError):
                await aiomysql.connect(
                    host=again.db_host, port=again.db_port or 3306, user=again.db_user, password="first-Pass"
                )
            check = await aiomysql.connect(
                host=again.db_host, port=again.db_port or 3306, user=again.dbcheck_user, password="chk"
            )
            async with check.cursor() as cur:
                await cur.execute("SHOW GRANTS")
                grants = " ".join(row[0] for row in await cur.fetchall())
            check.close()
            assert "GRANT USAGE ON *.*" in grants and "ALL PRIVILEGES" not in grants
        else:
            conn = await asyncpg.connect(
                host=again.db_host, port=again.db_port or 5432, user=again.db_admin_user, database="postgres"
            )
            owner = await conn.fetchval(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", again.db_name
            )
            can_login = await conn.fetchval(
                "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", again.db_user
            )
            superuser = await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = $1", again.db_user)
            await conn.close()
            assert (owner, can_login, superuser) == (again.db_user, True, False)
    finally:
        await _drop(first)


async def test_bad_names_and_missing_passwords_are_refused(backend: str) -> None:
    with pytest.raises(SetupError, match="RPA_DB_NAME"):
        await setup(_settings(backend, db_name="rpa; DROP DATABASE x", db_password="p"))
    with pytest.raises(SetupError, match="RPA_DB_PASSWORD"):
        await setup(_settings(backend, db_name=f"rpa_nopass_{os.getpid()}", db_password=""))
    await _drop(_settings(backend, db_name=f"rpa_nopass_{os.getpid()}"))


def test_the_command_waits_then_says_why() -> None:
    env = {
        **os.environ,
        "RPA_DB_DRIVER": "mariadb",
        "RPA_DB_HOST": "127.0.0.1",
        "RPA_DB_PORT": "1",  # nothing listens there
        "RPA_DB_PASSWORD": "secret-Pass",
    }
    out = subprocess.run(
        [sys.executable, "-m", "rpa_common.dbsetup", "--wait", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "did not answer in time" in out.stderr
    assert "secret-Pass" not in out.stderr + out.stdout


async def test_a_standby_is_waited_for_then_named() -> None:
    """Through a balancer still checking its servers, the set-up may reach a read-only standby."""
    from tests.conftest import require_backend

    require_backend("postgresql")
    admin = urlsplit(admin_url_for("postgresql"))
    ro_admin = f"rpa_ro_admin_{os.getpid()}"
    conn = await asyncpg.connect(
        host=admin.hostname, port=admin.port or 5432, user=admin.username, database="postgres"
    )
    await conn.execute(f'CREATE ROLE "{ro_admin}" LOGIN SUPERUSER')
    await conn.execute(f'ALTER ROLE "{ro_admin}" SET default_transaction_read_only = on')
    try:
        settings = _settings("postgresql", db_admin_user=ro_admin, db_password="p")
        started = time.monotonic()
        with pytest.raises(SetupError, match="read-only"):
            await setup(settings, wait_s=2.5)
        assert time.monotonic() - started >= 1.5  # it waited for a writer before giving up
    finally:
        await conn.execute(f'DROP ROLE IF EXISTS "{ro_admin}"')
        await conn.close()
