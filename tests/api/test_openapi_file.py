"""docs/openapi.json is the document the API serves: a client generated from it is the real API."""

from __future__ import annotations

import difflib

from rpa_api.openapi import DOCUMENT, REGENERATE, live_document


def test_the_committed_openapi_document_is_the_live_one() -> None:
    live = live_document()
    committed = DOCUMENT.read_text(encoding="utf-8") if DOCUMENT.exists() else ""
    if committed != live:
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    live.splitlines(keepends=True),
                    "docs/openapi.json (committed)",
                    "live",
                    n=1,
                )
            )[:60]
        )
        raise AssertionError(f"docs/openapi.json is out of date; regenerate it with:\n  {REGENERATE}\n{diff}")
