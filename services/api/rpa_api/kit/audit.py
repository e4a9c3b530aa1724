"""Audit records: append-only, written in the same transaction as the change they describe."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.encoders import jsonable_encoder
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal
from rpa_api.grants import IDENTITY_OBJECTS, SIGN_IN_ACTIONS
from rpa_api.grants import SESSION_KEY as GRANTS_SESSION_KEY
from rpa_common.audit import add_audit_record, redact
from rpa_common.models.enums import ActorType

__all__ = ["record", "redact"]


def record(
    session: AsyncSession,
    principal: Principal,
    action: str,
    object_type: str,
    object_id: uuid.UUID | str | None,
    changes: dict[str, Any] | None = None,
    kind: str = "api",
) -> None:
    if object_type in IDENTITY_OBJECTS and action not in SIGN_IN_ACTIONS:
        # Who may do what changed: cached grants of this account go once this commits (deps.Tx).
        session.info.setdefault(GRANTS_SESSION_KEY, set()).add(principal.account_id)
    add_audit_record(
        session,
        account_id=principal.account_id,
        kind=kind,
        actor_type=principal.actor_type if principal.actor_type else ActorType.USER,
        actor_id=principal.user_id,
        actor_name=principal.username,
        action=action,
        object_type=object_type,
        object_id=object_id,
        changes=jsonable_encoder(redact(changes)),
        client_address=principal.client_address,
        user_agent=principal.user_agent,
    )
