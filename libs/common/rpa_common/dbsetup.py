"""Create the orchestrator's database and its own database accounts; idempotent.

The services never log in as ``root`` / ``postgres``: through a balancer, ``root@localhost`` has no
TCP login at all, and an application account should hold only its own database. Run once per
deployment (and again after changing a password: it is set again)::

    RPA_DB_DRIVER=mariadb RPA_DB_HOST=<balancer> RPA_DB_ADMIN_USER=root RPA_DB_ADMIN_PASSWORD=... \\
    RPA_DB_USER=rpa RPA_DB_PASSWORD=... RPA_DBCHECK_PASSWORD=... python -m rpa_common.dbsetup --wait 300

It waits (``--wait`` seconds) for the database to answer, then creates, if missing:

- the database ``RPA_DB_NAME`` (utf8mb4 on MariaDB);
- the account ``RPA_DB_USER`` with ``RPA_DB_PASSWORD``, owner of (PostgreSQL) or with every privilege
  on (MariaDB) that database and nothing else;
- on MariaDB, the account ``RPA_DBCHECK_USER`` for the Galera health agent (``rpa_common.dbcheck``),
  with no privilege.

Passwords come from the environment (or an ``.env``), never the command line; they are sent to the
server only inside the statements that set them and are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from typing import Any

from rpa_common.settings import Settings

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class SetupError(Exception):
    """A setting that cannot be used as given."""


def _ident(value: str, what: str) -> str:
    if not _IDENT.match(value):
        raise SetupError(f"{what} {value!r} must be letters, digits and underscores (at most 63)")
    return value


async def _mariadb(settings: Settings, deadline: float) -> list[str]:
    import aiomysql

    user = _ident(settings.db_user or "rpa", "RPA_DB_USER")
    name = _ident(settings.db_name, "RPA_DB_NAME")
    check_user = _ident(settings.dbcheck_user, "RPA_DBCHECK_USER")
    conn = await _retry(
        deadline,
        lambda: aiomysql.connect(
            host=settings.db_host,
            port=settings.db_port or 3306,
            user=settings.db_admin_user or "root",
            password=settings.db_admin_password.get_secret_value(),
            connect_timeout=5,
            autocommit=True,
        ),
    )
    done = []
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
            done.append(f"database {name}")
            password = settings.db_password.get_secret_value()
            if not password:
                raise SetupError("RPA_DB_PASSWORD is empty: the application account needs a password")
            await cur.execute(f"CREATE USER IF NOT EXISTS '{user}'@'%%' IDENTIFIED BY %s", (password,))
            await cur.execute(f"ALTER USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
            await cur.execute(f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{user}'@'%'")
            done.append(f"account {user}@% (all privileges on {name} only)")
            check_password = settings.dbcheck_password.get_secret_value()
            if check_password:
                await cur.execute(
                    f"CREATE USER IF NOT EXISTS '{check_user}'@'%%' IDENTIFIED BY %s", (check_password,)
                )
                await cur.execute(f"ALTER USER '{check_user}'@'%%' IDENTIFIED BY %s", (check_password,))
                done.append(f"account {check_user}@% (no privileges: health checks)")
    finally:
        conn.close()
    return done


async def _postgresql(settings: Settings, deadline: float) -> list[str]:
    import asyncpg

    user = _ident(settings.db_user or "rpa", "RPA_DB_USER")
    name = _ident(settings.db_name, "RPA_DB_NAME")
    password = settings.db_password.get_secret_value()
    if not password:
        raise SetupError("RPA_DB_PASSWORD is empty: the application account needs a password")
    conn = await _retry(
        deadline,
        lambda: asyncpg.connect(
            host=settings.db_host,
            port=settings.db_port or 5432,
            user=settings.db_admin_user or "postgres",
            password=settings.db_admin_password.get_secret_value() or None,
            database="postgres",
            timeout=5,
        ),
    )
    done = []
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", user)
        # Utility statements take no parameters: quote the password as a literal (doubling quotes).
        literal = "'" + password.replace("'", "''") + "'"
        verb = "ALTER" if exists else "CREATE"
        await conn.execute(f'{verb} ROLE "{user}" LOGIN PASSWORD {literal}')
        done.append(f"role {user}")
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}" OWNER "{user}" ENCODING \'UTF8\'')
        else:
            await conn.execute(f'ALTER DATABASE "{name}" OWNER TO "{user}"')
        done.append(f"database {name} owned by {user}")
    finally:
        await conn.close()
    return done


async def _retry(deadline: float, connect: Any) -> Any:
    delay = 0.5
    while True:
        try:
            return await connect()
        except (OSError, TimeoutError, ConnectionError) as exc:
            last: BaseException = exc
        except Exception as exc:
            if "access denied" in str(exc).lower() or "authentication" in str(exc).lower():
                raise
            last = exc
        if time.monotonic() + delay > deadline:
            raise SetupError(f"the database did not answer in time: {type(last).__name__}: {last}") from None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


def _read_only(exc: BaseException) -> bool:
    """The balancer handed us a standby (PostgreSQL replica, MariaDB read_only): a fail-over or a
    balancer still checking its servers; another connection soon reaches the writer."""
    if type(exc).__name__ == "ReadOnlySQLTransactionError":  # asyncpg, SQLSTATE 25006
        return True
    return bool(getattr(exc, "args", None)) and exc.args[0] in (1290, 1792)  # MariaDB read-only


async def setup(settings: Settings, wait_s: float = 0.0) -> list[str]:
    """Create what is missing; return what now exists, in words."""
    deadline = time.monotonic() + wait_s
    create = _mariadb if settings.db_driver == "mariadb" else _postgresql
    while True:
        try:
            return await create(settings, deadline)
        except Exception as exc:
            if not _read_only(exc):
                raise
            if time.monotonic() + 1.0 > deadline:
                raise SetupError("the database answers read-only (a standby, not the writer)") from None
        await asyncio.sleep(1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rpa-dbsetup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the database to answer")
    args = parser.parse_args(argv)
    try:
        for line in asyncio.run(setup(Settings(), args.wait)):
            print(f"dbsetup: {line}")
    except SetupError as exc:
        print(f"dbsetup: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
