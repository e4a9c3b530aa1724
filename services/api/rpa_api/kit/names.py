"""Names that must be unique within a scope (an account, a terminal server...), and text filters.

The check before the write gives the friendly 409; the unique key in the database is what actually
holds under concurrency, and ``flush_or_conflict`` turns its violation into the same 409.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from rpa_common.errors import Conflict


async def name_taken(
    session: AsyncSession,
    column: InstrumentedAttribute[str],
    value: str,
    *scope: sa.ColumnElement[bool],
    but: uuid.UUID | None = None,
) -> bool:
    """Whether a row other than ``but`` has ``column == value`` within ``scope``.

    ``column`` is a mapped attribute (``Robot.name``); its class's ``id`` identifies rows.
    """
    id_column = column.class_.id
    stmt = sa.select(id_column).where(column == value, *scope)
    if but is not None:
        stmt = stmt.where(id_column != but)
    return (await session.scalar(stmt.limit(1))) is not None


async def flush_or_conflict(session: AsyncSession, detail: str, field: str) -> None:
    """Flush; a unique key hit by a concurrent writer is the same 409 as the check before it."""
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(detail, field=field) from None


def contains(column: Any, text: str) -> sa.ColumnElement[bool]:
    """Case-insensitive substring match, with ``%`` and ``_`` taken literally."""
    result: sa.ColumnElement[bool] = column.icontains(text, autoescape=True)
    return result
