"""The append-only audit trail, as every service writes it (the API's ``kit.audit`` builds on it).

A record is added to the caller's session, so it commits or rolls back with the change it
describes. Secret-looking fields of ``changes`` are replaced by ``"***"`` before they are stored.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import Enum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.models import AuditRecord
from rpa_common.models.enums import ActorType

SECRET_MARKERS = ("password", "secret", "key", "token", "credential")


def redact(changes: dict[str, Any] | None) -> dict[str, Any] | None:
    """Replace the value of every secret-looking field by ``"***"``, recursively."""
    if changes is None:
        return None
    out: dict[str, Any] = {}
    for name, value in changes.items():
        if any(marker in name.lower() for marker in SECRET_MARKERS):
            out[name] = "***"
        elif isinstance(value, dict):
            out[name] = redact(value)
        else:
            out[name] = value
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def add_audit_record(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    actor_type: ActorType,
    actor_id: uuid.UUID | None,
    actor_name: str | None,
    action: str,
    object_type: str,
    object_id: uuid.UUID | str | None,
    changes: dict[str, Any] | None = None,
    kind: str = "api",
    client_address: str | None = None,
    user_agent: str | None = None,
) -> AuditRecord:
    """Add one audit record to ``session`` (flushed with the caller's next flush)."""
    record = AuditRecord(
        account_id=account_id,
        kind=kind,
        actor_type=actor_type,
        actor_id=actor_id,
        actor_name=actor_name,
        action=action,
        object_type=object_type,
        object_id=str(object_id) if object_id is not None else None,
        changes=_jsonable(redact(changes)),
        client_address=client_address,
        user_agent=(user_agent or "")[:500] or None,
    )
    session.add(record)
    return record
