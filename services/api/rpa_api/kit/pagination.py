"""One way to paginate, sort and filter lists everywhere: ``?limit=&offset=&sort=-created_at``."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Generic, Literal, Optional, TypeVar

import sqlalchemy as sa
from fastapi import Depends, Query, Response
from pydantic import BaseModel, TypeAdapter
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


async def page_params(
    limit: Annotated[int, Query(ge=1, le=500, description="Items per page")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip")] = 0,
    sort: Annotated[
        str | None, Query(description="Field to sort by; prefix with '-' for descending", max_length=64)
    ] = None,
) -> PageParams:
    return PageParams(limit=limit, offset=offset, sort=sort)


Paging = Annotated[PageParams, Depends(page_params)]


def sorted_by(*fields: str) -> Callable[..., Awaitable[PageParams]]:
    """``page_params`` for a list sortable by ``fields``: ``sort`` is an enum of them (and their
    ``-`` descending forms) in the OpenAPI document, so a client sees what it may send.

    Use as ``paging: Annotated[PageParams, Depends(sorted_by("name", "created_at"))]``; the same
    names key the ``sortable`` mapping given to ``paginate``.
    """
    choices = tuple(choice for name in fields for choice in (name, f"-{name}"))
    sort_type = Literal[choices]  # type: ignore[valid-type]

    async def params(limit: int = 50, offset: int = 0, sort: str | None = None) -> PageParams:
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
    *,
    columns_of: type[BaseModel] | None = None,
) -> tuple[list[Any], int]:
    """Rows of one page and the total, sorted by an allowed field (422 naming ``sort`` otherwise).

    ``stmt`` selects one entity; the id column breaks ties so pages never overlap. With
    ``columns_of`` (the response schema of an item), only the entity's columns that the schema
    names are selected and plain rows come back instead of ORM objects: a list page then costs a
    fraction of the CPU (no identity map, no instance state), and ``Schema.model_validate(row)``
    reads the rows by attribute just the same.
    """
    # The enum in the document and the columns here must name the same fields.
    assert params.sortable is None or params.sortable == set(sortable), (params.sortable, set(sortable))
    sort = params.sort or default_sort
    desc = sort.startswith("-")
    name = sort.lstrip("-+")
    column = sortable.get(name)
    if column is None:
        raise Unprocessable(f"cannot sort by {name!r}; allowed: {', '.join(sorted(sortable))}", field="sort")
    entity = stmt.column_descriptions[0]["entity"]
    tiebreak = getattr(entity, "id", None)
    order = [column.desc() if desc else column.asc()]
    if tiebreak is not None and tiebreak is not column:
        order.append(tiebreak.desc() if desc else tiebreak.asc())
    page = stmt.order_by(*order).limit(params.limit).offset(params.offset)
    if columns_of is not None:
        # One query for the page and the total: COUNT(*) OVER () is the count before LIMIT.
        result = await session.execute(
            page.with_only_columns(*_columns(entity, columns_of), sa.func.count().over().label(_TOTAL))
        )
        rows = list(result.all())
        if rows:
            return rows, int(getattr(rows[0], _TOTAL))
        if params.offset == 0:
            return rows, 0
        return rows, await _count(session, stmt, tiebreak)  # beyond the last page
    total = await _count(session, stmt, tiebreak)
    return list((await session.execute(page)).scalars().all()), total


_TOTAL = "total_rows_"


async def _count(session: AsyncSession, stmt: sa.Select[Any], tiebreak: Any) -> int:
    counted = stmt.order_by(None) if tiebreak is None else stmt.with_only_columns(tiebreak).order_by(None)
    return int(
        (await session.execute(sa.select(sa.func.count()).select_from(counted.subquery()))).scalar_one()
    )


def _columns(entity: Any, schema: type[BaseModel]) -> list[Any]:
    """The mapped columns of ``entity`` named like ``schema``'s fields (computed fields excluded)."""
    key = (entity, schema)
    found = _COLUMNS.get(key)
    if found is None:
        mapped = {attr.key for attr in sa.inspect(entity).column_attrs}
        found = [getattr(entity, name) for name in schema.model_fields if name in mapped]
        _COLUMNS[key] = found
    return found


_COLUMNS: dict[tuple[Any, type[BaseModel]], list[Any]] = {}


def page_json(item: type[BaseModel], rows: list[Any], total: int, params: PageParams) -> Response:
    """A ``Page`` of ``item`` made from ``rows`` (ORM objects or rows read by attribute), as a ready
    JSON response: rows validated and serialised in two calls into pydantic's core instead of one model
    per row, and FastAPI's second validation of the returned page skipped (same JSON as ``Page``). The endpoint still declares
    ``response_model=Page[Item]``, which is what the OpenAPI document shows."""
    adapter = _ITEMS.get(item)
    if adapter is None:
        adapter = _ITEMS[item] = TypeAdapter(list[item])  # type: ignore[valid-type]
    items = adapter.dump_json(adapter.validate_python(rows, from_attributes=True))
    tail = f',"total":{int(total)},"limit":{int(params.limit)},"offset":{int(params.offset)}}}'
    return Response(b'{"items":' + items + tail.encode(), media_type="application/json")


_ITEMS: dict[type[BaseModel], TypeAdapter[list[Any]]] = {}
