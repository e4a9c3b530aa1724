"""Database engines, sessions and the unit of work."""

from rpa_common.db.engine import create_engine, dialect_of, session_factory
from rpa_common.db.uow import is_retryable, run_in_transaction, unit_of_work

__all__ = [
    "create_engine",
    "dialect_of",
    "is_retryable",
    "run_in_transaction",
    "session_factory",
    "unit_of_work",
]
