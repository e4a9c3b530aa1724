"""Refuse text that no database can store: a NUL character, or bytes that are not valid UTF-8.

PostgreSQL refuses NUL in text ("invalid byte sequence for encoding UTF8: 0x00") and MariaDB cuts or
mangles it; a lone surrogate (``"\\ud800"`` in JSON) cannot be encoded at all. Either would reach the
database and come back as a 500, so every request is checked before its endpoint runs, and answered
422 naming the field: path and query parameters, urlencoded and multipart form fields, and every key
and string of a JSON body.

The checks cost next to nothing on ordinary requests: a query string is parsed again only when it
has a ``%`` escape or a non-ASCII byte, and a JSON body is walked only when it has a ``\\u`` escape
or is not valid UTF-8 (raw NUL is not valid JSON, so a NUL can only arrive escaped).
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from fastapi import Request

from rpa_common.errors import Unprocessable
from rpa_common.text import NUL, bad_text, find_bad_json_text, printable_field

_NUL = NUL
_FORM = "application/x-www-form-urlencoded"


def _refuse(field: str, reason: str) -> Unprocessable:
    return Unprocessable(f"{field}: {reason}", field=field)


def _check_urlencoded(raw: bytes) -> None:
    """Each ``name=value`` of a query string: NUL and invalid UTF-8 refused, naming the parameter."""
    for pair in raw.split(b"&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition(b"=")
        name_bytes = unquote_to_bytes(raw_name.replace(b"+", b" "))
        name = printable_field(name_bytes.decode("utf-8", errors="replace"))
        for part in (name_bytes, unquote_to_bytes(raw_value.replace(b"+", b" "))):
            if b"\x00" in part:
                raise _refuse(name, "must not contain a NUL character")
            try:
                part.decode("utf-8")
            except UnicodeDecodeError:
                raise _refuse(name, "must be valid UTF-8") from None


def check_json_body(body: bytes) -> None:
    """422 naming the first key or string of a JSON body that is NUL-bearing or not valid UTF-8."""
    found = find_bad_json_text(body)
    if found:
        raise _refuse(*found)


async def text_guard(request: Request) -> None:
    """App-wide dependency: runs before each endpoint's own dependencies."""
    scope = request.scope
    raw_path: bytes | None = scope.get("raw_path")
    if raw_path and (b"%" in raw_path or not raw_path.isascii()):
        path_ok = True
        try:
            decoded = unquote_to_bytes(raw_path).decode("utf-8")
            path_ok = _NUL not in decoded
        except UnicodeDecodeError:
            path_ok = False
        if not path_ok:
            # The server decoded the path with replacement characters: the parameter holding one (or
            # the NUL) is the culprit.
            for name, value in request.path_params.items():
                if isinstance(value, str) and (_NUL in value or "\ufffd" in value):
                    raise _refuse(name, "must be valid UTF-8 without NUL characters")
            raise _refuse("path", "must be valid UTF-8 without NUL characters")
    query: bytes = scope.get("query_string", b"")
    if query and (b"%" in query or not query.isascii()):
        _check_urlencoded(query)
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == _FORM or ctype.startswith("multipart/"):
        # Parsed already by FastAPI (cached on the request; its raw bytes are gone): text fields are
        # str, files are not. The parser decodes invalid UTF-8 to U+FFFD (urlencoded) or falls back
        # to Latin-1 (multipart), so a U+FFFD here is taken for invalid bytes: a form field has no
        # reason to carry the replacement character on purpose.
        form = await request.form()
        for name, value in form.multi_items():
            if isinstance(value, str):
                reason = bad_text(value) or (
                    "must be valid UTF-8" if "\ufffd" in value and ctype == _FORM else None
                )
                if reason:
                    raise _refuse(printable_field(name), reason)
    elif ctype == "application/json" or ctype.endswith("+json"):
        body = await request.body()
        if b"\\u" in body or not body.isascii():
            try:
                body.decode("utf-8")
                needs_walk = b"\\u" in body
            except UnicodeDecodeError:
                needs_walk = True
            if needs_walk:
                check_json_body(body)
