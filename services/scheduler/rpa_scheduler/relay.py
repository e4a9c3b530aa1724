"""The event outbox relay: outbox rows to the JetStream stream ``RPA_EVENTS`` (issue 13).

Every replica may run it. One pass locks a batch of the oldest rows (``FOR UPDATE SKIP LOCKED``:
replicas take disjoint batches), fills in the folder of rows whose producer left it to the relay,
publishes each with ``Nats-Msg-Id`` = the row's id and deletes the rows the stream acknowledged, in
the same transaction. A relay killed after a publish and before its commit leaves the rows; the
next pass publishes them again and the stream drops the duplicates (same ``Nats-Msg-Id`` within
its duplicate window). With NATS down, rows wait in the table: nothing is lost.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
import structlog
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common import events
from rpa_common.models import Process, Queue, Robot, Task, Trigger
from rpa_common.models.events import EventOutbox

log = structlog.get_logger(__name__)

DUPLICATE_WINDOW_S = 600.0
"""How long the stream remembers a ``Nats-Msg-Id``: longer than any relay pass may take."""


async def ensure_stream(nc: NATS, retention_s: float) -> None:
    """Create the stream, or bring its retention to the settings' (idempotent; every replica)."""
    js = nc.jetstream()
    config = StreamConfig(
        name=events.STREAM,
        subjects=[events.ALL_SUBJECTS],
        max_age=retention_s,
        duplicate_window=min(DUPLICATE_WINDOW_S, retention_s),
    )
    try:
        await js.stream_info(events.STREAM)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except Exception:  # another replica created it first: update below
            log.debug("events.stream_exists")
    await js.update_stream(config)


_FOLDER_OF: dict[str, tuple[Any, str | None]] = {
    "job.created": (Process, "process_id"),
    "job.state": (Process, "process_id"),
    "task.created": (Task, None),
    "task.state": (Task, None),
    "robot.status": (Robot, None),
    "trigger.fired": (Trigger, None),
    "trigger.changed": (Trigger, None),
}
"""Where the relay finds a row's folder: the model, and the ``data`` key of its id (None: the row's
``object_id``)."""


async def _fill_folders(session: AsyncSession, rows: list[EventOutbox]) -> dict[int, uuid.UUID | None]:
    wanted: dict[Any, set[uuid.UUID]] = {}
    keys: dict[int, tuple[Any, uuid.UUID]] = {}
    for row in rows:
        if row.folder_id is not None or row.type not in _FOLDER_OF:
            continue
        model, key = _FOLDER_OF[row.type]
        raw = row.data.get(key) if key else row.object_id
        if raw is None:
            continue
        ident = uuid.UUID(str(raw))
        wanted.setdefault(model, set()).add(ident)
        keys[row.id] = (model, ident)
    found: dict[tuple[Any, uuid.UUID], uuid.UUID | None] = {}
    for model, ids in wanted.items():
        if model is Task:  # a task's folder is its queue's
            query = sa.select(Task.id, Queue.folder_id).join(Queue, Queue.id == Task.queue_id)
        else:
            query = sa.select(model.id, model.folder_id)
        result = await session.execute(query.where(model.id.in_(list(ids))))
        for ident, folder in result.all():
            found[(model, ident)] = folder
    return {row.id: (row.folder_id if row.id not in keys else found.get(keys[row.id])) for row in rows}


def message_id(row: EventOutbox) -> str:
    """The stream's de-duplication id of an outbox row: the same for every re-publish of the row (a
    pass cut short before its delete), different for any other row. The row id alone is not enough:
    databases sharing one NATS (or one restored from a backup, whose ids count again) would see their
    events dropped as duplicates for the stream's duplicate window."""
    return f"outbox-{row.account_id}-{row.id}-{row.at.timestamp():.6f}"


async def relay_pass(session: AsyncSession, nc: NATS, batch: int) -> int:
    """Publish and delete up to ``batch`` rows in one transaction; how many were relayed.

    A publish that fails (NATS down, no ack) ends the pass: the rows acked before it are deleted,
    the rest wait for the next pass."""
    js = nc.jetstream()
    rows = list(
        (
            await session.execute(
                sa.select(EventOutbox).order_by(EventOutbox.id).limit(batch).with_for_update(skip_locked=True)
            )
        ).scalars()
    )
    if not rows:
        return 0
    folders = await _fill_folders(session, rows)
    done: list[int] = []
    try:
        for row in rows:
            event = events.Event(
                type=row.type,
                account_id=row.account_id,
                folder_id=folders.get(row.id),
                object_id=row.object_id,
                at=row.at,
                data=row.data,
            )
            await js.publish(
                events.subject(row.account_id, row.type),
                event.model_dump_json(exclude={"id"}).encode(),
                stream=events.STREAM,
                headers={"Nats-Msg-Id": message_id(row)},
            )
            done.append(row.id)
    except Exception as exc:
        log.warning("events.relay_publish_failed", error=type(exc).__name__, relayed=len(done))
    if done:
        await session.execute(
            sa.delete(EventOutbox)
            .where(EventOutbox.id.in_(done))
            .execution_options(synchronize_session=False)
        )
    return len(done)
