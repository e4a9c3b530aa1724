"""One way to paginate, sort and filter lists everywhere: ``?limit=&offset=&sort=-created_at``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, Generic, Literal, Optional, TypeVar

import sqlalchemy as sa
from fastapi import Depends, Query
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.errors import Unprocessable

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


# The largest integer every JSON client holds exactly; beyond 64 bits a database would answer an error.
MAX_OFFSET = 2**53 - 1


class PageParams(BaseModel):
    limit: int
    offset: int
    sort: str | None
    # The fields the endpoint's ``sort`` enum names (``sorted_by``); None for the free-form ``Paging``.
    sortable: frozenset[str] | None = None


def page_params(
    limit: Annotated[int, Query(ge=1, le=500, description="Items per page")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip")] = 0,
    sort: Annotated[
        str | None, Query(description="Field to sort by; prefix with '-' for descending", max_length=64)
    ] = None,
) -> PageParams:
    return PageParams(limit=limit, offset=offset, sort=sort)


Paging = Annotated[PageParams, Depends(page_params)]


def sorted_by(*fields: str) -> Callable[..., PageParams]:
    """``page_params`` for a list sortable by ``fields``: ``sort`` is an enum of them (and their
    ``-`` descending forms) in the OpenAPI document, so a client sees what it may send.

    Use as ``paging: Annotated[PageParams, Depends(sorted_by("name", "created_at"))]``; the same
    names key the ``sortable`` mapping given to ``paginate``.
    """
    choices = tuple(choice for name in fields for choice in (name, f"-{name}"))
    sort_type = Literal[choices]  # type: ignore[valid-type]

    def params(limit: int = 50, offset: int = 0, sort: str | None = None) -> PageParams:
        return PageParams(limit=limit, offset=offset, sort=sort, sortable=frozenset(fields))

    base = inspect.signature(page_params)
    sort = base.parameters["sort"].replace(
        annotation=Annotated[
            Optional[sort_type],  # noqa: UP045 - a runtime value, not an annotation
            Query(description="Field to sort by; prefix with '-' for descending"),
        ]
    )
    params.__signature__ = base.replace(  # type: ignore[attr-defined]
        parameters=[base.parameters["limit"], base.parameters["offset"], sort]
    )
    return params


async def paginate(
    session: AsyncSession,
    stmt: sa.Select[Any],
    params: PageParams,
    sortable: dict[str, Any],
    default_sort: str,
) -> tuple[list[Any], int]:
    """Rows of one page and the total, sorted by an allowed field (422 naming ``sort`` otherwise).

    ``stmt`` selects one entity; the id column breaks ties so pages never overlap.
    """
    # The enum in the document and the columns here must name the same fields.
    assert params.sortable is None or params.sortable == set(sortable), (params.sortable, set(sortable))
    sort = params.sort or default_sort
    desc = sort.startswith("-")
    name = sort.lstrip("-+")
    column = sortable.get(name)
    if column is None:
        raise Unprocessable(f"cannot sort by {name!r}; allowed: {', '.join(sorted(sortable))}", field="sort")
    total = (
        await session.execute(sa.select(sa.func.count()).select_from(stmt.order_by(None).subquery()))
    ).scalar_one()
    entity = stmt.column_descriptions[0]["entity"]
    tiebreak = getattr(entity, "id", None)
    order = [column.desc() if desc else column.asc()]
    if tiebreak is not None and tiebreak is not column:
        order.append(tiebreak.desc() if desc else tiebreak.asc())
    rows = (
        (await session.execute(stmt.order_by(*order).limit(params.limit).offset(params.offset)))
        .scalars()
        .all()
    )
    return list(rows), int(total)
