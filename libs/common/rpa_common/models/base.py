"""Declarative base, naming convention and the portable column types.

Every type here means the same on PostgreSQL and MariaDB: UUIDs are native on PostgreSQL and
CHAR(32) on MariaDB; timestamps are stored as UTC with microseconds and always come back aware.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


NAME_COLLATION_MARIADB = "utf8mb4_uca1400_nopad_as_ci"
"""Collation of unique names on MariaDB 10.10+: case-insensitive, accent-sensitive, no padding, which
is how ``lower(name)`` compares on PostgreSQL ("Bots" = "bots"; "Bots" != "Böts" and != "Bots ").
Older MariaDB falls back to ``NAME_COLLATION_MARIADB_OLD`` (case- and accent-insensitive)."""
NAME_COLLATION_MARIADB_OLD = "utf8mb4_general_nopad_ci"

UNIQUE_NAMES: tuple[tuple[str, tuple[str, ...], str, int, bool], ...] = (
    ("account", (), "name", 100, False),
    ("access_folder", ("account_id",), "name", 100, False),
    ("role", ("account_id",), "name", 100, False),
    ("user_account", (), "username", 150, False),
    ("calendar", ("account_id",), "name", 100, False),
    ("process", ("account_id",), "name", 100, False),
    ("queue", ("account_id",), "name", 100, False),
    ("task", ("queue_id",), "unique_name", 255, True),
    ("resource_group", ("account_id",), "name", 100, False),
    ("resource", ("account_id",), "name", 100, False),
    ("robot", ("account_id",), "name", 100, False),
    ("robot_group", ("account_id",), "name", 100, False),
    ("terminal_server", ("account_id",), "name", 100, False),
    ("unattended_account", ("terminal_server_id",), "login", 255, False),
    ("trigger", ("account_id",), "name", 100, False),
)
"""Every name people give that must be unique in its scope: (table, scope columns, name column,
length, nullable). Each compares case-insensitively on both databases (``unique_name``)."""


def unique_name(table: str, column: str = "name") -> tuple[sa.UniqueConstraint, sa.Index]:
    """A name unique within its scope, compared case-insensitively on PostgreSQL and MariaDB alike.

    PostgreSQL: a unique index on ``(scope..., lower(name))``. MariaDB: the plain unique key, the
    column's collation (``NAME_COLLATION_MARIADB``, set by the migration) makes it case-insensitive.
    Either way a second "bots" next to "Bots" is a duplicate key, which the API answers 409.
    """
    [(scope, name_col)] = [(sc, c) for t, sc, c, _, _ in UNIQUE_NAMES if t == table and c == column]
    index_name = "_".join(["uq", table, *scope, "lower", name_col])
    return (
        # A tuple of dialect names is documented and honoured; the stub only admits one string.
        sa.UniqueConstraint(*scope, name_col).ddl_if(dialect=("mysql", "mariadb")),  # type: ignore[arg-type]
        sa.Index(index_name, *scope, sa.text(f"lower({name_col})"), unique=True).ddl_if(dialect="postgresql"),
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes; naive DATETIME(6) on MariaDB, timestamptz on PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use aware UTC datetimes")
        value = value.astimezone(UTC)
        if dialect.name in ("mysql", "mariadb"):
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Blob(TypeDecorator[bytes]):
    """Binary data: bytea on PostgreSQL, LONGBLOB on MariaDB."""

    impl = sa.LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.LONGBLOB())
        return dialect.type_descriptor(sa.LargeBinary())


class JSONType(TypeDecorator[Any]):
    """JSON documents: jsonb-free ``json`` on PostgreSQL, LONGTEXT-backed JSON on MariaDB."""

    impl = sa.JSON
    cache_ok = True


class StrEnumType(TypeDecorator[Any]):
    """A Python ``enum.Enum`` stored by value in a VARCHAR (no native enum: portable migrations)."""

    impl = sa.String
    cache_ok = True

    def __init__(self, enum_cls: type[enum.Enum], length: int = 32) -> None:
        super().__init__(length)
        self.enum_cls = enum_cls
        self.length = length

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return str(self.enum_cls(value).value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return self.enum_cls(value)

    def copy(self, **kw: Any) -> StrEnumType:
        return StrEnumType(self.enum_cls, self.length)


class IntEnumType(TypeDecorator[Any]):
    """A Python ``enum.IntEnum`` stored as SMALLINT."""

    impl = sa.SmallInteger
    cache_ok = True

    def __init__(self, enum_cls: type[enum.IntEnum]) -> None:
        super().__init__()
        self.enum_cls = enum_cls

    def process_bind_param(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(self.enum_cls(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else self.enum_cls(value)

    def copy(self, **kw: Any) -> IntEnumType:
        return IntEnumType(self.enum_cls)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        uuid.UUID: sa.Uuid(),
        dict[str, Any]: JSONType(),
        list[Any]: JSONType(),
        bytes: Blob(),
    }


class IdMixin:
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


def account_fk() -> Mapped[uuid.UUID]:
    return mapped_column(sa.ForeignKey("account.id", ondelete="CASCADE"), index=True)


def folder_fk() -> Mapped[uuid.UUID | None]:
    return mapped_column(sa.ForeignKey("access_folder.id", ondelete="SET NULL"), index=True)
