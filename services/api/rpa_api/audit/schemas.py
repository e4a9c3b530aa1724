"""Audit records as the API shows them, a page of them, and the chain check's answer."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from rpa_api.kit.schemas import Out
from rpa_common.models.enums import ActorType


class AuditRecordOut(Out):
    id: uuid.UUID
    seq: int
    """The record's place in its account's chain: 1, 2, 3..."""
    at: datetime
    kind: str
    """What wrote it: ``api`` (a call), ``auth`` (a login, a token), ``robot`` (a robot, through the gateway)."""
    actor_type: ActorType
    actor_id: uuid.UUID | None
    actor_name: str | None
    action: str
    object_type: str
    object_id: str | None
    changes: dict[str, Any] | None
    client_address: str | None
    user_agent: str | None
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    """Newest first. ``next_cursor`` is the ``cursor`` of the next (older) page; null on the last."""

    items: list[AuditRecordOut]
    next_cursor: int | None


class BrokenLinkOut(BaseModel):
    record_id: uuid.UUID | None
    """The first record that does not hold (null when records are missing at the chain's end)."""
    seq: int | None
    problem: str
    """What does not match: a missing seq, a prev_hash that is not the previous hash, a hash that is
    not the content's, or a record outside the chain."""


class AuditVerifyOut(BaseModel):
    ok: bool
    account_id: uuid.UUID
    records: int
    """Records checked: every record up to the head read when the check began."""
    head_seq: int
    head_hash: str
    """Note it somewhere else: a chain that verifies and still reaches this hash was not rewritten."""
    broken: BrokenLinkOut | None
