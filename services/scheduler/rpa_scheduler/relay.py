"""The event outbox relay: outbox rows to the JetStream stream ``RPA_EVENTS`` (issue 13).

Every replica may run it. One pass locks a batch of the oldest rows (``FOR UPDATE SKIP LOCKED``:
replicas take disjoint batches), fills in the folder of rows whose producer left it to the relay,
publishes them all with ``Nats-Msg-Id`` = the row's id, awaits the acks together and deletes the
rows the stream acknowledged, in the same transaction. A relay killed after a publish and before its commit leaves the rows; the
next pass publishes them again and the stream drops the duplicates (same ``Nats-Msg-Id`` within
its duplicate window). With NATS down, rows wait in the table: nothing is lost.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from typing import Any

import sqlalchemy as sa
import structlog
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext
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


def _jetstream(nc: NATS) -> JetStreamContext:
    """One JetStream context per connection: its first ``publish_async`` subscribes to a reply inbox,
    which a context made per pass would repeat (a subscription more each pass)."""
    js = _CONTEXTS.get(nc)
    if js is None:
        js = _CONTEXTS[nc] = nc.jetstream()
    return js


_CONTEXTS: weakref.WeakKeyDictionary[NATS, JetStreamContext] = weakref.WeakKeyDictionary()

PUBLISH_TIMEOUT_S = 5.0
"""How long a pass waits for the stream's acks of its batch."""


async def relay_pass(session: AsyncSession, nc: NATS, batch: int) -> int:
    """Publish and delete up to ``batch`` rows in one transaction; how many were relayed.

    The batch is published at once, in order on one connection, and the acks awaited together (one
    round trip a batch, not one a row). The rows the stream acknowledged are deleted; the others
    (NATS down, no ack within ``PUBLISH_TIMEOUT_S``) wait for the next pass, which publishes them
    again: one the stream stored without its ack reaching us is dropped there as a duplicate."""
    js = _jetstream(nc)
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
    acks: list[asyncio.Future[Any]] = []
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
            acks.append(
                await js.publish_async(
                    events.subject(row.account_id, row.type),
                    event.model_dump_json(exclude={"id"}).encode(),
                    wait_stall=PUBLISH_TIMEOUT_S,
                    stream=events.STREAM,
                    headers={"Nats-Msg-Id": message_id(row)},
                )
            )
    except Exception as exc:  # NATS closed, or too many publishes waiting: the rest waits
        log.warning("events.relay_publish_failed", error=type(exc).__name__, published=len(acks))
    if acks:
        await asyncio.wait(acks, timeout=PUBLISH_TIMEOUT_S)
    done: list[int] = []
    for row, ack in zip(rows, acks, strict=False):
        if ack.done() and not ack.cancelled() and ack.exception() is None:
            done.append(row.id)
        elif not ack.done():
            ack.cancel()  # frees its slot; the row is published again next pass
    if len(done) < len(rows):
        log.warning("events.relay_not_acknowledged", relayed=len(done), waiting=len(rows) - len(done))
    if done:
        await session.execute(
            sa.delete(EventOutbox)
            .where(EventOutbox.id.in_(done))
            .execution_options(synchronize_session=False)
        )
    return len(done)
