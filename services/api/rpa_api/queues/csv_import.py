"""Tasks from a CSV file: a header row, then one task per row.

Columns (any order, names matched without regard to case): ``name`` (required), ``description``,
``priority`` (``low``/``normal``/``high`` or 1-3), ``tags`` (separated by ``;``), ``deadline`` and
``delay_until`` (ISO 8601; UTC when no zone is given). Every other column is a parameter of the task,
named as its header, its cell the value (a text). A bad row is reported by its line number in the
file, and nothing of the file is written.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime

from rpa_common.errors import PayloadTooLarge, Unprocessable
from rpa_common.models.enums import TaskPriority
from rpa_common.taskflow import TaskInput

KNOWN = ("name", "description", "priority", "tags", "deadline", "delay_until")
PRIORITIES = {
    "low": TaskPriority.LOW,
    "normal": TaskPriority.NORMAL,
    "high": TaskPriority.HIGH,
    "1": TaskPriority.LOW,
    "2": TaskPriority.NORMAL,
    "3": TaskPriority.HIGH,
}


@dataclass(frozen=True)
class ParsedCsv:
    items: list[TaskInput]
    lines: list[int]
    """The line in the file where each item's row starts (the header is line 1)."""


def bad_line(line: int, column: str | None, message: str) -> Unprocessable:
    where = f"line {line}" + (f", column {column!r}" if column else "")
    return Unprocessable(f"{where}: {message}; nothing was added", field="file", line=line, column=column)


def _time(text: str, line: int, column: str) -> datetime | None:
    if not text.strip():
        return None
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise bad_line(line, column, f"{text!r} is not an ISO 8601 date-time") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def parse(data: bytes, max_rows: int) -> ParsedCsv:
    """The tasks of a CSV file, or a 422 naming the line (413 beyond ``max_rows``)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise bad_line(line, None, "the file is not UTF-8 text") from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise bad_line(line, None, "the file holds a NUL character")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as err:
        raise bad_line(reader.line_num, None, f"malformed CSV ({err})") from None
    if header is None or not any(h.strip() for h in header):
        raise Unprocessable("the file is empty: give a header row with a 'name' column", field="file")
    names = [h.strip() for h in header]
    lowered = [n.lower() for n in names]
    for index, name in enumerate(names):
        if not name:
            raise bad_line(1, None, f"column {index + 1} of the header has no name")
        if lowered.index(name.lower()) != index:
            raise bad_line(1, name, "the header names this column twice")
    if "name" not in lowered:
        raise bad_line(1, None, "the header has no 'name' column")
    items: list[TaskInput] = []
    lines: list[int] = []
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader, None)
        except csv.Error as err:
            raise bad_line(start, None, f"malformed CSV ({err})") from None
        if row is None:
            break
        line, start = start, reader.line_num + 1
        if not row or (len(row) == 1 and not row[0].strip() and len(names) > 1):
            continue  # a blank line
        if len(row) != len(names):
            raise bad_line(line, None, f"{len(row)} cells for {len(names)} columns")
        if len(items) >= max_rows:
            raise PayloadTooLarge(f"more than {max_rows} rows; split the file", field="file")
        cells = dict(zip(lowered, row, strict=True))
        priority_text = cells.get("priority", "").strip().lower()
        if priority_text and priority_text not in PRIORITIES:
            raise bad_line(line, "priority", f"{priority_text!r} is not low, normal, high or 1-3")
        tags = [t.strip() for t in cells.get("tags", "").split(";") if t.strip()]
        parameters = {
            name: value for name, low, value in zip(names, lowered, row, strict=True) if low not in KNOWN
        }
        items.append(
            TaskInput(
                name=cells["name"],
                description=cells.get("description", ""),
                priority=PRIORITIES[priority_text] if priority_text else TaskPriority.NORMAL,
                tags=tags,
                deadline=_time(cells.get("deadline", ""), line, "deadline"),
                delay_until=_time(cells.get("delay_until", ""), line, "delay_until"),
                parameters=parameters,
            )
        )
        lines.append(line)
    if not items:
        raise Unprocessable("the file has a header but no task rows", field="file")
    return ParsedCsv(items, lines)
