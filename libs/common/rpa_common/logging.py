"""Structured logging (structlog) for every service; secrets are never passed to a logger.

Standard-library loggers (uvicorn, SQLAlchemy, nats) are rendered by the same processors, so a
service writes one JSON object per line, whatever wrote it.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json
        # Plain tracebacks: the default (rich) one prints local variables, and those may hold secrets.
        else structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(PoolResetFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


class PoolResetFilter(logging.Filter):
    """Demote SQLAlchemy's "Exception during reset or similar" to one warning line.

    When the database fails over, every pooled connection to the lost node fails its rollback on
    check-in; SQLAlchemy logs each at ERROR with a traceback, although nothing is wrong with the
    work (the connection is discarded, the unit of work retries on a fresh one). An operator would
    be paged for it. Other pool errors stay as they are.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno >= logging.ERROR
            and record.name.startswith("sqlalchemy.pool")
            and isinstance(record.msg, str)
            and record.msg.startswith("Exception during reset")
        ):
            exc = record.exc_info[1] if record.exc_info else None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "pooled connection discarded: its reset failed (%s: %s)"
            record.args = (type(exc).__name__ if exc else "unknown", str(exc)[:200] if exc else "")
            record.exc_info = None
            record.exc_text = None
        return True
