"""Triggers as CSV: export every trigger the caller sees, import a file of them (all rows or none).

Objects are named, not given by id, so a file exported from one account (test) imports into another
(production): ``folder``, ``process``, ``robot``, ``robot_group``, ``queue``, ``calendar`` and
``source_process`` hold names. ``input_args`` is a JSON object; ``completion_states`` is separated by
``;``; empty cells mean "not set" (the default). Webhook secrets are never exported: an imported
webhook trigger gets a new secret, shown once in the import's answer.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from rpa_common.errors import PayloadTooLarge, Unprocessable

COLUMNS = (
    "name",
    "kind",
    "enabled",
    "description",
    "folder",
    "process",
    "robot",
    "robot_group",
    "priority",
    "input_args",
    "cron",
    "time_zone",
    "interval_s",
    "once_at",
    "calendar",
    "misfire_policy",
    "misfire_grace_s",
    "queue",
    "min_tasks",
    "max_jobs",
    "jobs_per_tasks",
    "webhook_auth",
    "source_process",
    "completion_states",
)
REQUIRED = ("name", "kind", "process")
# CSV column -> the body field holding the id it names, and what it names.
NAMED = {
    "folder": ("folder_id", "folder"),
    "process": ("process_id", "process"),
    "robot": ("robot_id", "robot"),
    "robot_group": ("robot_group_id", "robot group"),
    "queue": ("queue_id", "queue"),
    "calendar": ("calendar_id", "calendar"),
    "source_process": ("source_process_id", "process"),
}
FIELD_COLUMN = {field: column for column, (field, _) in NAMED.items()}


def bad_line(line: int, column: str | None, message: str) -> Unprocessable:
    where = f"line {line}" + (f", column {column!r}" if column else "")
    return Unprocessable(f"{where}: {message}; nothing was imported", field="file", line=line, column=column)


@dataclass(frozen=True)
class Row:
    line: int
    values: dict[str, Any]
    """The body fields of the row, with names (``process``...) still to resolve into ids."""


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    return str(value)


def write(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c)) for c in COLUMNS})
    return out.getvalue()


def _bool(text: str, line: int, column: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise bad_line(line, column, f"{text!r} is not true or false")


def parse(data: bytes, max_rows: int) -> list[Row]:
    """The rows of a triggers CSV, or a 422 naming the line and column (413 beyond ``max_rows``)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise bad_line(data[: err.start].count(b"\n") + 1, None, "the file is not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise bad_line(1, None, "the file is empty; a header row is needed") from None
    except csv.Error as err:
        raise bad_line(1, None, f"not CSV ({err})") from None
    names = [h.strip().lower() for h in header]
    for column in names:
        if column not in COLUMNS:
            raise bad_line(1, column, f"unknown column; the columns are {', '.join(COLUMNS)}")
    if len(set(names)) != len(names):
        raise bad_line(1, None, "a column is given twice")
    for column in REQUIRED:
        if column not in names:
            raise bad_line(1, column, "this column is required")
    rows: list[Row] = []
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise bad_line(line, None, f"not CSV ({err})") from None
        if not any(c.strip() for c in cells):
            continue
        if len(rows) >= max_rows:
            raise PayloadTooLarge(f"more than {max_rows} rows", field="file")
        if len(cells) != len(names):
            raise bad_line(line, None, f"{len(cells)} cells for {len(names)} columns")
        values: dict[str, Any] = {}
        for column, cell in zip(names, cells, strict=True):
            if not cell.strip():
                continue
            if column == "enabled":
                values[column] = _bool(cell, line, column)
            elif column == "input_args":
                try:
                    parsed = json.loads(cell)
                except ValueError:
                    raise bad_line(line, column, "not JSON") from None
                if not isinstance(parsed, dict):
                    raise bad_line(line, column, "must be a JSON object") from None
                values[column] = parsed
            elif column == "completion_states":
                values[column] = [s.strip() for s in cell.split(";") if s.strip()]
            else:
                values[column] = cell.strip() if column != "description" else cell
        rows.append(Row(line, values))
    return rows


def validation_error(err: ValidationError, line: int) -> Unprocessable:
    """A body's validation error as the line and column of the file."""
    first = err.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else None
    column = FIELD_COLUMN.get(field, field) if field else None
    return bad_line(line, column, first["msg"])
