"""Text that no database can store: a NUL character, or what is not valid UTF-8.

PostgreSQL refuses NUL in text ("invalid byte sequence for encoding UTF8: 0x00") and MariaDB cuts or
mangles it; a lone surrogate (``"\\ud800"`` in JSON, or invalid bytes decoded with
``surrogateescape``) cannot be encoded at all. Whatever takes text from outside (the API's
requests, robot frames) checks it with these and refuses it naming the field, instead of letting the
database turn it into a 500.
"""

from __future__ import annotations

import json
from typing import Any

NUL = "\x00"


def bad_text(value: str) -> str | None:
    """Why ``value`` cannot be stored, or ``None``."""
    if NUL in value:
        return "must not contain a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid UTF-8 (no lone surrogates)"
    return None


def printable_field(name: str) -> str:
    """A field name fit for an error message, whatever it holds."""
    return name.encode("utf-8", "backslashreplace").decode().replace(NUL, "\\x00")


def find_bad_text(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first key or string of a parsed JSON value that cannot be stored: (dotted field, reason)."""
    if isinstance(value, str):
        reason = bad_text(value)
        return (path or "body", reason) if reason else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            reason = bad_text(key)
            if reason:
                return printable_field(where), reason
            found = find_bad_text(item, where)
            if found:
                return printable_field(found[0]), found[1]
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = find_bad_text(item, f"{path}.{index}" if path else str(index))
            if found:
                return found
    return None


def find_bad_json_text(body: bytes) -> tuple[str, str] | None:
    """Like ``find_bad_text`` on a raw JSON body, invalid UTF-8 bytes included; ``None`` as well for
    a body that is not JSON at all (the caller's own parsing reports that)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        # Decode what can be decoded; the invalid bytes become lone surrogates that the walk finds.
        text = body.decode("utf-8", errors="surrogateescape")
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return find_bad_text(parsed)
