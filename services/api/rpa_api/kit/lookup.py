"""Fetch one object the caller owns, or answer 404 as if it did not exist.

Every ``get_<noun>`` of the domain services is this with its own scoped query (account, folders):
an id of another account, or of a folder the caller cannot see, is indistinguishable from an id
that was never used.
"""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.errors import NotFound

T = TypeVar("T")


async def get_owned(
    session: AsyncSession,
    stmt: sa.Select[T],
    kind: str,
    ident: uuid.UUID,
    *,
    lock: bool = False,
    lock_of: Any = None,
) -> T:
    """The single row of ``stmt`` (a query already scoped to the caller), locked if asked."""
    if lock:
        stmt = stmt.with_for_update(of=lock_of) if lock_of is not None else stmt.with_for_update()
    found = (await session.execute(stmt)).scalar_one_or_none()
    if found is None:
        raise NotFound.of(kind, ident)
    return found
