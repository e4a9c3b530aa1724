"""Log queries: the filters, folder scoping and the (at, id) cursor, shared by ``GET /logs``,
``GET /jobs/{id}/logs`` and the live tail.

The cursor is opaque to clients: the direction and the (at, id) of the last line served, in
base64url. A page asks for lines strictly after it, so pages never overlap or skip, whatever is
inserted meanwhile (a line inserted later with an earlier ``at`` falls before the cursor: the live
tail looks back for those, see ``router.stream_job_logs``).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal
from rpa_api.logs.schemas import LogLine, LogPage
from rpa_common.errors import Unprocessable
from rpa_common.models import Process, Robot, RobotMessage
from rpa_common.models.enums import LogLevel

LEVELS = {level.name.capitalize(): level for level in LogLevel}
MAX_TEXT_CHARS = 200
Order = Literal["asc", "desc"]
_COLUMNS = [getattr(RobotMessage, name) for name in LogLine.model_fields]


@dataclass(frozen=True)
class Cursor:
    order: Order
    at: datetime
    id: uuid.UUID

    def encode(self) -> str:
        raw = f"{self.order[0]}:{_micros(self.at)}:{self.id.hex}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str, field_name: str = "cursor") -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
            kind, micros, ident = raw.split(":")
            order: Order = {"a": "asc", "d": "desc"}[kind]  # type: ignore[assignment]
            at = _EPOCH + timedelta(microseconds=int(micros))
            return cls(order, at, uuid.UUID(hex=ident))
        except (ValueError, KeyError, OverflowError, UnicodeDecodeError):
            raise Unprocessable(
                "not a cursor this API gave out; use next_cursor of a page as it is", field=field_name
            ) from None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(at: datetime) -> int:
    return (at.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1)


def parse_level(value: str, field_name: str) -> LogLevel:
    level = LEVELS.get(value.strip().capitalize())
    if level is None:
        raise Unprocessable(f"unknown level {value!r}; one of {', '.join(LEVELS)}", field=field_name)
    return level


@dataclass
class LogFilter:
    """What a caller asks for; every field optional, all given ones must hold."""

    job_id: uuid.UUID | None = None
    robot_id: uuid.UUID | None = None
    process_id: uuid.UUID | None = None
    process_version_id: uuid.UUID | None = None
    task_id: uuid.UUID | None = None
    levels: Sequence[str] = field(default_factory=list)
    min_level: str | None = None
    at_from: datetime | None = None
    at_to: datetime | None = None
    text: str | None = None

    def clauses(self) -> list[sa.ColumnElement[bool]]:
        out: list[sa.ColumnElement[bool]] = []
        for column, value in (
            (RobotMessage.job_id, self.job_id),
            (RobotMessage.robot_id, self.robot_id),
            (RobotMessage.process_id, self.process_id),
            (RobotMessage.process_version_id, self.process_version_id),
            (RobotMessage.task_id, self.task_id),
        ):
            if value is not None:
                out.append(column == value)
        if self.levels:
            out.append(RobotMessage.level.in_({parse_level(v, "level") for v in self.levels}))
        if self.min_level is not None:
            out.append(RobotMessage.level >= parse_level(self.min_level, "min_level"))
        at_from, at_to = _utc(self.at_from, "from"), _utc(self.at_to, "to")
        if at_from is not None and at_to is not None and at_from > at_to:
            detail = "from is after to"
            raise Unprocessable(
                detail, errors=[{"field": "from", "message": detail}, {"field": "to", "message": detail}]
            )
        if at_from is not None:
            out.append(RobotMessage.at >= at_from)
        if at_to is not None:
            out.append(RobotMessage.at <= at_to)
        if self.text:
            if len(self.text) > MAX_TEXT_CHARS:
                raise Unprocessable(f"at most {MAX_TEXT_CHARS} characters", field="text")
            # Case-insensitive on both databases; % and _ in the text are matched as themselves.
            out.append(RobotMessage.message.icontains(self.text, autoescape=True))
        return out


def _utc(value: datetime | None, field_name: str) -> datetime | None:
    """A time from the query string in UTC (no zone given: UTC)."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # the year 9999 east of UTC, the year 1 west of it
        raise Unprocessable("out of the range of dates", field=field_name) from None


def scope(principal: Principal, filters: LogFilter) -> list[sa.ColumnElement[bool]]:
    """The lines the caller may see, as the job listing scopes jobs: its account's, and, for a
    role limited to folders, lines of processes in those folders (a line of no job: its robot's).

    Asked for one job's or one robot's lines, the account's test is written so that no index
    serves it (``coalesce(account_id, account_id)``, the same rows): ``account_id = ...`` beside
    ``job_id = ...`` lets the planner walk the account's index instead of the job's, which it does
    when the table grows faster than its statistics (two million lines read to find forty: 540 ms
    instead of 3 on a table ``bench/logs.py`` filled in 40 s)."""
    column: Any = RobotMessage.account_id
    if filters.job_id is not None or filters.robot_id is not None:
        column = sa.func.coalesce(RobotMessage.account_id, RobotMessage.account_id)
    account = column == principal.account_id
    out: list[sa.ColumnElement[bool]] = [account]
    if not principal.all_folders:
        visible_processes = sa.select(Process.id).where(
            Process.account_id == principal.account_id, principal.folder_clause(Process.folder_id)
        )
        visible_robots = sa.select(Robot.id).where(
            Robot.account_id == principal.account_id, principal.folder_clause(Robot.folder_id)
        )
        out.append(
            sa.or_(
                RobotMessage.process_id.in_(visible_processes),
                sa.and_(RobotMessage.process_id.is_(None), RobotMessage.robot_id.in_(visible_robots)),
            )
        )
    return out


def after(cursor: Cursor) -> sa.ColumnElement[bool]:
    """Lines strictly after ``cursor`` in its order (spelled out: both databases use the index)."""
    at, ident = RobotMessage.at, RobotMessage.id
    if cursor.order == "asc":
        return sa.or_(at > cursor.at, sa.and_(at == cursor.at, ident > cursor.id))
    return sa.or_(at < cursor.at, sa.and_(at == cursor.at, ident < cursor.id))


async def page(
    session: AsyncSession,
    where: list[sa.ColumnElement[bool]],
    *,
    limit: int,
    order: Order,
    cursor: Cursor | None,
) -> LogPage:
    if cursor is not None:
        if cursor.order != order:
            raise Unprocessable(
                f"this cursor pages in {cursor.order} order; ask with order={cursor.order}", field="cursor"
            )
        where = [*where, after(cursor)]
    sort: list[sa.UnaryExpression[Any]] = (
        [RobotMessage.at.asc(), RobotMessage.id.asc()]
        if order == "asc"
        else [RobotMessage.at.desc(), RobotMessage.id.desc()]
    )
    # One more than asked: whether there is a next page, without a count.
    rows = (await session.execute(sa.select(*_COLUMNS).where(*where).order_by(*sort).limit(limit + 1))).all()
    items = [LogLine.model_validate(r) for r in rows[:limit]]
    next_cursor = Cursor(order, items[-1].at, items[-1].id).encode() if len(rows) > limit else None
    return LogPage(items=items, next_cursor=next_cursor, limit=limit)


async def late_lines(
    session: AsyncSession,
    where: list[sa.ColumnElement[bool]],
    cursor: Cursor,
    lookback: timedelta,
    received_since: datetime,
    limit: int,
) -> list[LogLine]:
    """Lines at or before ``cursor`` (within ``lookback`` of it) stored since ``received_since``: a
    line committed after later ones of the same job (another gateway batch) that a tail following
    the cursor alone would miss."""
    rows = (
        await session.execute(
            sa.select(*_COLUMNS)
            .where(
                *where,
                RobotMessage.at >= cursor.at - lookback,
                sa.not_(after(cursor)),
                RobotMessage.received_at >= received_since,
            )
            .order_by(RobotMessage.at.asc(), RobotMessage.id.asc())
            .limit(limit)
        )
    ).all()
    return [LogLine.model_validate(r) for r in rows]
