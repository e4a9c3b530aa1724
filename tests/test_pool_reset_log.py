"""A fail-over leaves no ERROR line from the connection pool (an operator would be paged for it).

When the database node behind a pooled connection dies, SQLAlchemy can fail the connection's reset
on check-in and logs "Exception during reset or similar" at ERROR with a traceback (seen on every
Galera fail-over by a tester), although the connection is simply discarded and the unit of work
retries on a fresh one. The project's logging turns exactly that record into one WARNING line.
The record is emitted here as SQLAlchemy's pool emits it (same logger, message and exc_info).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from rpa_common.logging import configure_logging

POOL_LOGGER = "sqlalchemy.pool.impl.AsyncAdaptedQueuePool"


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The services' logging set-up, writing to a buffer instead of stderr."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("INFO", json=True)
    out = io.StringIO()
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(out)
    yield out
    root.handlers[:], level = saved
    root.setLevel(level)


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_failed_reset_is_one_warning_line(json_logs: io.StringIO) -> None:
    try:
        raise ConnectionResetError("connection was closed in the middle of operation")
    except ConnectionResetError:
        logging.getLogger(POOL_LOGGER).error("Exception during reset or similar", exc_info=True)
    [line] = _lines(json_logs)
    assert line["level"] == "warning"
    assert "ConnectionResetError" in str(line["event"])
    assert "exception" not in line and "Traceback" not in json.dumps(line)


def test_other_pool_errors_stay_errors(json_logs: io.StringIO) -> None:
    logging.getLogger(POOL_LOGGER).error("Exception closing connection %r", "<conn>")
    logging.getLogger("rpa_common.db").error("Exception during reset or similar")  # not the pool's
    lines = _lines(json_logs)
    assert [line["level"] for line in lines] == ["error", "error"]
