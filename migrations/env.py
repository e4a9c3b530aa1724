"""Alembic environment: async engine from RPA_* settings; one history for PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from typing import Any

import sqlalchemy as sa
from alembic import context
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection

from rpa_common.db.engine import create_engine
from rpa_common.models import Base
from rpa_common.models.base import Blob, IntEnumType, JSONType, StrEnumType, UTCDateTime
from rpa_common.settings import Settings, normalize_db_url

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def compare_type(
    ctx: Any, inspected_column: Any, metadata_column: Any, inspected_type: Any, metadata_type: Any
) -> bool | None:
    """Treat the portable types as equal to what each database reports back for them."""
    dialect = ctx.dialect.name
    meta = metadata_type
    if isinstance(meta, UTCDateTime):
        if dialect == "postgresql":
            return not (isinstance(inspected_type, sa.DateTime) and inspected_type.timezone)
        return not (isinstance(inspected_type, sa.DateTime) and getattr(inspected_type, "fsp", None) == 6)
    if isinstance(meta, Blob):
        return not isinstance(inspected_type, sa.types._Binary)
    if isinstance(meta, JSONType | sa.JSON):
        # MariaDB stores JSON as LONGTEXT with a json_valid() check.
        return not isinstance(inspected_type, sa.JSON | sa.Text | mysql.LONGTEXT)
    if isinstance(meta, StrEnumType):
        return not (isinstance(inspected_type, sa.String) and inspected_type.length == meta.impl.length)  # type: ignore[attr-defined]
    if isinstance(meta, IntEnumType):
        return not isinstance(inspected_type, sa.SmallInteger)
    if isinstance(meta, sa.Uuid):
        # Native UUID on PostgreSQL and on MariaDB 10.7+; CHAR(32) on older MariaDB.
        if isinstance(inspected_type, sa.Uuid):
            return False
        return not (isinstance(inspected_type, sa.CHAR | sa.String) and inspected_type.length == 32)
    if isinstance(meta, sa.Boolean) and dialect in ("mysql", "mariadb"):
        return not isinstance(inspected_type, sa.Boolean | sa.SmallInteger | sa.Integer)
    return None  # default comparison


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Render the product's column types as plain portable ones, so old migrations never
    depend on today's enum classes."""
    if type_ != "type":
        return False
    if isinstance(obj, StrEnumType):
        return f"sa.String(length={obj.impl.length})"  # type: ignore[attr-defined]
    if isinstance(obj, IntEnumType):
        return "sa.SmallInteger()"
    if isinstance(obj, JSONType):
        return "sa.JSON()"
    if isinstance(obj, UTCDateTime):
        return "rt.UTCDateTime()"
    if isinstance(obj, Blob):
        return "rt.Blob()"
    return False


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    return normalize_db_url(url) if url else Settings().database_url


def include_object_for(dialect: str) -> Any:
    """Leave out of the comparison what the models create on other databases only (``ddl_if``):
    unique names are a ``lower()`` index on PostgreSQL and a unique key on MariaDB."""

    def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        ddl_if = getattr(obj, "_ddl_if", None)
        if reflected or ddl_if is None or ddl_if.dialect is None:
            return True
        wanted = (ddl_if.dialect,) if isinstance(ddl_if.dialect, str) else tuple(ddl_if.dialect)
        return dialect in wanted or (dialect == "mysql" and "mariadb" in wanted)

    return include_object


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=include_object_for(connection.dialect.name),
        compare_type=compare_type,
        compare_server_default=False,
        render_item=render_item,
        render_as_batch=False,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    settings = Settings(db_url=_url())
    engine = create_engine(settings, "migrations", pool_size=1)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, compare_type=compare_type
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())
