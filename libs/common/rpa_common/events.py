"""The event stream's envelope: what the SPA's ``GET /api/v1/events`` and webhooks deliver.

Every change a person or a program may want to follow (a job's state, a robot's status, a queue
task, a trigger's fire, a terminal session) becomes one ``Event``. Events live in the JetStream
stream ``STREAM`` under ``rpa.events.<account_id>.<type>``; an event's ``id`` is its sequence in
that stream, so a client that reconnects with ``Last-Event-ID`` resumes right after it. Two
consumers read the stream: the API's Server-Sent Events and the scheduler's webhook deliveries.

Issue 13 builds the producers (an outbox written in the transaction of the change, relayed to the
stream) and the consumers; this module is the contract between them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pydantic import BaseModel, Field

from rpa_common.nats.subjects import PREFIX

STREAM = "RPA_EVENTS"
"""The JetStream stream holding the events (retention from settings)."""

EVENT_TYPES: tuple[str, ...] = (
    "job.created",
    "job.state",
    "robot.status",
    "task.created",
    "task.state",
    "trigger.fired",
    "trigger.changed",
    "session.state",
)
"""Every event type, as subscriptions (webhooks) and filters (``?types=``) name them."""


def subject(account_id: uuid.UUID | str, event_type: str) -> str:
    """The stream subject of one event: per account, so a consumer filters by account cheaply."""
    return f"{PREFIX}.events.{account_id}.{event_type}"


def account_subjects(account_id: uuid.UUID | str) -> str:
    """Every event of one account (a consumer's filter subject)."""
    return f"{PREFIX}.events.{account_id}.>"


ALL_SUBJECTS = f"{PREFIX}.events.>"

WEBHOOK_CONSUMER = "rpa-webhooks"
"""The scheduler's durable consumer feeding webhook deliveries: one for all replicas."""


class Event(BaseModel):
    """One change. ``data`` holds the object's fields a client needs to update its view without a
    second request (never a secret); ``folder_id`` lets the API show an event only to callers who
    may see that folder."""

    id: int = Field(0, description="The event's sequence in the stream; 0 before it is stored")
    type: str
    account_id: uuid.UUID
    folder_id: uuid.UUID | None = None
    object_id: uuid.UUID | None = Field(None, description="The job, robot, task, trigger or session")
    at: dt.datetime
    data: dict[str, Any] = Field(default_factory=dict)


# Producers: one outbox row in the transaction of the change ---------------------------------------


def record(
    session: Any,
    event_type: str,
    *,
    account_id: uuid.UUID,
    object_id: uuid.UUID | None,
    at: dt.datetime,
    data: dict[str, Any],
    folder_id: uuid.UUID | None = None,
) -> None:
    """Add the event of a change to ``session`` (an ``AsyncSession``): it is inserted with the
    session's next flush, so a caller changing many rows in one transaction gets one multi-row
    insert, and it exists only if the change commits. ``folder_id`` may be left to the relay, which
    looks it up from the object (a job's process, a task's queue, a robot, a trigger). With
    ``RPA_EVENTS_ENABLED=false`` it records nothing."""
    from rpa_common.models.events import EventOutbox
    from rpa_common.settings import get_settings

    if event_type not in EVENT_TYPES:
        raise ValueError(f"not an event type: {event_type!r}")
    if not get_settings().events_enabled:
        return  # RPA_EVENTS_ENABLED=false: no outbox row, no event (bench/dispatch.py's comparison)
    session.add(
        EventOutbox(
            type=event_type,
            account_id=account_id,
            folder_id=folder_id,
            object_id=object_id,
            at=at,
            data=data,
        )
    )
