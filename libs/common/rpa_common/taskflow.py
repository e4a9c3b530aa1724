"""Queues and tasks: the task state machine of BRIEF.md, shared by the API, the gateway and the scheduler.

Every function takes an ``AsyncSession`` inside a transaction, flushes (or executes) its writes but
never commits, and raises ``TaskError`` for anything a client or a robot caused, before it writes
anything: the caller's transaction stays usable.

States::

    Created ──take──> In Progress ──finish──> Successful | Failed (Application) | Failed (Business)
    Postponed ──"delay until" passed──> Created          In Progress ──lock expired──> Created
    Created / In Progress ──abandon timeout──> Abandoned

A failed or abandoned task is retried, as its queue's flags say and up to its ``max_retries``, by a
new Created task linked to it (``retry_of_id``) with ``retry_number + 1``.

Locks: a take sets the owner (robot, job), an expiry and adds one to ``lock_token``, the fencing
token. A renew, progress note or finish must name the task's robot and current token and find the
lock unexpired; otherwise it changes nothing and is refused (``stale_token`` / ``not_in_progress``).
Taking is one guarded ``SELECT ... FOR UPDATE SKIP LOCKED`` of the best candidate: concurrent takers
skip each other's rows, and a row that changed under a taker no longer matches its guard, so no task
is ever held by two robots.

Every change is recorded in ``task_event`` (history), added to the session and written with the
caller's next flush or its commit: many robot frames in one group commit share one insert.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from rpa_common import events
from rpa_common.db.engine import dialect_of
from rpa_common.models import Queue, Task, TaskEvent
from rpa_common.models.base import utcnow
from rpa_common.models.enums import (
    FINAL_TASK_STATES,
    ActorType,
    JobState,
    TaskEventKind,
    TaskPriority,
    TaskState,
)
from rpa_common.settings import get_settings
from rpa_common.text import find_bad_text

S = TaskState

OUTCOMES = frozenset({S.SUCCESSFUL, S.FAILED_APPLICATION, S.FAILED_BUSINESS})
"""What a robot may finish a task as."""

WAITING = frozenset({S.CREATED, S.POSTPONED})

NAME_MAX = 255
TEXT_MAX = 1000
TAGS_MAX = 50
TAG_MAX = 100
PARAMETERS_MAX_BYTES = 64 * 1024
OUTPUT_MAX_BYTES = 256 * 1024
LOCK_MAX_S = 86400


class TaskError(Exception):
    """Something a client or robot caused: ``code`` (stable, for robots), ``detail``, ``field``, ``status``."""

    STATUS = {
        "queue_not_found": 404,
        "task_not_found": 404,
        "duplicate_name": 409,
        "stale_token": 409,
        "not_in_progress": 409,
        "bad_state_change": 409,
        "too_many": 413,
        "invalid": 422,
    }

    def __init__(
        self, code: str, detail: str, *, field: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.field = field
        self.status = status or self.STATUS.get(code, 422)


@dataclass(frozen=True)
class TaskInput:
    """One task to add (from the API, a CSV row or a robot's ``task.add``)."""

    name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    priority: TaskPriority = TaskPriority.NORMAL
    tags: list[str] = field(default_factory=list)
    deadline: datetime | None = None
    delay_until: datetime | None = None
    description: str = ""
    reference: str | None = None
    """An optional client reference (idempotency); kept for callers, not stored."""


@dataclass(frozen=True)
class Actor:
    """Who made a change, as the history records it."""

    type: ActorType
    id: uuid.UUID | None = None

    @classmethod
    def system(cls) -> Actor:
        return cls(ActorType.SYSTEM)

    @classmethod
    def robot(cls, robot_id: uuid.UUID) -> Actor:
        return cls(ActorType.ROBOT, robot_id)


def _actor(robot_id: uuid.UUID | None, user_id: uuid.UUID | None) -> Actor:
    if robot_id is not None:
        return Actor(ActorType.ROBOT, robot_id)
    if user_id is not None:
        return Actor(ActorType.USER, user_id)
    return Actor.system()


def after(at: datetime) -> datetime:
    """A moment later than ``at``: the next history entry of a change sorts after the one at ``at``."""
    return max(utcnow(), at + timedelta(microseconds=1))


def _clip(text: str | None, size: int = TEXT_MAX) -> str | None:
    return None if text is None else text[:size]


def event(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    task_id: uuid.UUID,
    kind: TaskEventKind,
    actor: Actor,
    at: datetime,
    from_state: TaskState | None = None,
    to_state: TaskState | None = None,
    note: str | None = None,
    related_task_id: uuid.UUID | None = None,
) -> None:
    """Add one history entry; it is written with the session's next flush or its commit."""
    session.add(
        TaskEvent(
            id=uuid.uuid4(),
            account_id=account_id,
            task_id=task_id,
            at=at,
            kind=kind,
            from_state=from_state,
            to_state=to_state,
            actor_type=actor.type,
            actor_id=actor.id,
            note=_clip(note),
            related_task_id=related_task_id,
        )
    )
    if kind in (TaskEventKind.CREATED, TaskEventKind.STATE):
        events.record(
            session,
            "task.created" if kind == TaskEventKind.CREATED else "task.state",
            account_id=account_id,
            object_id=task_id,
            at=at,
            data={
                "task_id": str(task_id),
                "from_state": from_state and from_state.value,
                "to_state": to_state and to_state.value,
            },
        )


# Queues ------------------------------------------------------------------------------------------


def name_equals(session: AsyncSession, column: Any, value: str) -> sa.ColumnElement[bool]:
    """``column = value`` as the unique names compare: ``lower()`` on PostgreSQL (its unique index is
    on ``lower(name)``), the column's case-insensitive collation on MariaDB."""
    if dialect_of(session) == "postgresql":
        return sa.func.lower(column) == value.lower()
    return column == value


async def queue_by_name(session: AsyncSession, account_id: uuid.UUID, name: str) -> Queue | None:
    """The account's queue of this name (any case), or None."""
    if not isinstance(name, str) or not name or len(name) > 100 or find_bad_text(name):
        return None
    return (
        await session.execute(
            sa.select(Queue).where(Queue.account_id == account_id, name_equals(session, Queue.name, name))
        )
    ).scalar_one_or_none()


async def queue_by_id(session: AsyncSession, account_id: uuid.UUID, queue_id: uuid.UUID) -> Queue | None:
    return (
        await session.execute(sa.select(Queue).where(Queue.id == queue_id, Queue.account_id == account_id))
    ).scalar_one_or_none()


# Adding ------------------------------------------------------------------------------------------


EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)


def check_time(value: Any, where: str) -> datetime | None:
    """An aware date-time both databases store (MariaDB's DATETIME ends at year 9999), in UTC."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TaskError("invalid", "must be a date-time", field=where)
    if value.tzinfo is None:
        raise TaskError("invalid", "must carry a time zone (e.g. 2026-05-01T12:00:00Z)", field=where)
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        value = EARLIEST - timedelta(days=1)
    if not EARLIEST <= value <= LATEST:
        raise TaskError("invalid", "must lie between the years 1900 and 9999", field=where)
    return value


def _json_size(value: Any, where: str) -> int:
    try:
        return len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError):
        raise TaskError("invalid", "must be a JSON object of plain values", field=where) from None


def validate(item: TaskInput, where: str) -> dict[str, Any]:
    """The columns of a new task from ``item``, or ``TaskError("invalid")`` naming the field."""
    name = item.name.strip() if isinstance(item.name, str) else None
    if not name:
        raise TaskError("invalid", "a task needs a name", field=f"{where}name")
    if len(name) > NAME_MAX:
        raise TaskError("invalid", f"at most {NAME_MAX} characters", field=f"{where}name")
    description = item.description if item.description is not None else ""
    if not isinstance(description, str) or len(description) > TEXT_MAX:
        raise TaskError("invalid", f"a text of at most {TEXT_MAX} characters", field=f"{where}description")
    parameters = item.parameters if item.parameters is not None else {}
    if not isinstance(parameters, dict) or not all(isinstance(k, str) for k in parameters):
        raise TaskError("invalid", "must be an object of named values", field=f"{where}parameters")
    if _json_size(parameters, f"{where}parameters") > PARAMETERS_MAX_BYTES:
        raise TaskError(
            "invalid", f"at most {PARAMETERS_MAX_BYTES // 1024} KiB of JSON", field=f"{where}parameters"
        )
    try:
        priority = TaskPriority(item.priority)
    except (ValueError, TypeError):
        raise TaskError(
            "invalid", "must be 1 (low), 2 (normal) or 3 (high)", field=f"{where}priority"
        ) from None
    tags_in = item.tags if item.tags is not None else []
    if not isinstance(tags_in, list | tuple) or len(tags_in) > TAGS_MAX:
        raise TaskError("invalid", f"a list of at most {TAGS_MAX} tags", field=f"{where}tags")
    tags: list[str] = []
    for tag in tags_in:
        if not isinstance(tag, str) or not tag.strip() or len(tag.strip()) > TAG_MAX:
            raise TaskError(
                "invalid", f"each tag is a text of 1 to {TAG_MAX} characters", field=f"{where}tags"
            )
        if tag.strip() not in tags:
            tags.append(tag.strip())
    bad = find_bad_text({"name": name, "description": description, "parameters": parameters, "tags": tags})
    if bad is not None:
        raise TaskError("invalid", bad[1], field=f"{where}{bad[0]}")
    return {
        "name": name,
        "description": description,
        "parameters": parameters,
        "priority": priority,
        "tags": tags,
        "deadline": check_time(item.deadline, f"{where}deadline"),
        "delay_until": check_time(item.delay_until, f"{where}delay_until"),
    }


async def _names_taken(session: AsyncSession, queue_id: uuid.UUID, names: Sequence[str]) -> set[str]:
    """Which of ``names`` (lower-cased) already name a task of the queue that holds its name."""
    taken: set[str] = set()
    for start in range(0, len(names), 500):
        chunk = names[start : start + 500]
        if dialect_of(session) == "postgresql":
            cond = sa.func.lower(Task.unique_name).in_([n.lower() for n in chunk])
        else:
            cond = Task.unique_name.in_(chunk)
        rows = await session.execute(sa.select(Task.unique_name).where(Task.queue_id == queue_id, cond))
        taken.update(str(r[0]).lower() for r in rows)
    return taken


async def add_tasks(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    queue: Queue,
    items: Sequence[TaskInput],
    robot_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    job_id: uuid.UUID | None = None,
    actor: Actor | None = None,
    bulk_max: int | None = None,
    field_prefix: str = "tasks",
    ids: Sequence[uuid.UUID] | None = None,
) -> list[Task]:
    """Add ``items`` to ``queue``: all of them or, on any bad item, none (``TaskError`` naming it).

    A task with a ``delay_until`` still to come is Postponed, otherwise Created. When the queue
    forbids duplicate names, a name already used in the queue (or twice in ``items``) is a
    ``duplicate_name`` (409). ``bulk_max`` defaults to ``RPA_TASK_BULK_MAX``. The tasks are inserted
    here (the returned objects are not attached to the session). ``ids``: the new tasks' ids, made by
    the caller outside its transaction so that a re-run after a lost commit inserts the same rows.
    """
    if queue.account_id != account_id:
        raise TaskError("queue_not_found", "no such queue", field="queue")
    most = bulk_max if bulk_max is not None else get_settings().task_bulk_max
    if not items:
        raise TaskError("invalid", "give at least one task", field=field_prefix)
    if len(items) > most:
        raise TaskError("too_many", f"{len(items)} tasks given; at most {most} per call", field=field_prefix)
    rows = [validate(item, f"{field_prefix}[{i}].") for i, item in enumerate(items)]
    now = utcnow()
    if queue.unique_task_names:
        seen: dict[str, int] = {}
        for i, row in enumerate(rows):
            key = row["name"].lower()
            if key in seen:
                raise TaskError(
                    "duplicate_name",
                    f"the name {row['name']!r} is given twice (also at {field_prefix}[{seen[key]}])",
                    field=f"{field_prefix}[{i}].name",
                )
            seen[key] = i
        taken = await _names_taken(session, queue.id, [r["name"] for r in rows])
        for i, row in enumerate(rows):
            if row["name"].lower() in taken:
                raise TaskError(
                    "duplicate_name",
                    f"the queue already has a task named {row['name']!r}",
                    field=f"{field_prefix}[{i}].name",
                )
    who = actor or _actor(robot_id, user_id)
    tasks: list[Task] = []
    values: list[dict[str, Any]] = []
    if ids is not None and len(ids) != len(rows):
        raise ValueError("one id per task")
    for index, row in enumerate(rows):
        delay = row["delay_until"]
        state = S.POSTPONED if delay is not None and delay > now else S.CREATED
        value = {
            **row,
            "id": ids[index] if ids is not None else uuid.uuid4(),
            "account_id": account_id,
            "queue_id": queue.id,
            "unique_name": row["name"] if queue.unique_task_names else None,
            "comment": "",
            "state": state,
            "retry_number": 0,
            "retry_of_id": None,
            "lock_token": 0,
            # One microsecond apart: tasks of equal priority added together are taken in the order given.
            "created_at": now + timedelta(microseconds=index),
            "updated_at": now,
        }
        values.append(value)
        tasks.append(Task(**value))
    note = f"added by job {job_id}" if job_id is not None else None
    if queue.unique_task_names:
        # A concurrent add of the same name hits the unique key: only this insert is undone.
        try:
            async with session.begin_nested():
                await session.execute(sa.insert(Task), values)
        except IntegrityError:
            raise TaskError(
                "duplicate_name", "a task of the same name was added at the same time", field=field_prefix
            ) from None
    else:
        await session.execute(sa.insert(Task), values)
    await session.execute(
        sa.insert(TaskEvent),
        [
            {
                "id": uuid.uuid4(),
                "account_id": account_id,
                "task_id": v["id"],
                "at": now,
                "kind": TaskEventKind.CREATED,
                "from_state": None,
                "to_state": v["state"],
                "actor_type": who.type,
                "actor_id": who.id,
                "note": note,
                "related_task_id": None,
            }
            for v in values
        ],
    )
    for v in values:
        events.record(
            session,
            "task.created",
            account_id=account_id,
            object_id=v["id"],
            at=now,
            data={
                "task_id": str(v["id"]),
                "queue_id": str(queue.id),
                "from_state": None,
                "to_state": v["state"].value,
            },
        )
    return tasks


# Taking ------------------------------------------------------------------------------------------


def lock_seconds(lock_s: int | None) -> int:
    if lock_s is None:
        return get_settings().task_lock_s
    if isinstance(lock_s, bool) or not isinstance(lock_s, int) or not 1 <= lock_s <= LOCK_MAX_S:
        raise TaskError("invalid", f"the lock time is 1 to {LOCK_MAX_S} seconds", field="lock_s")
    return lock_s


def _candidates(queue_id: uuid.UUID, now: datetime) -> tuple[sa.Select[Any], sa.Select[Any]]:
    """The two looks of "take next", best first: overdue Created tasks, then every Created task;
    each by priority (highest first), then age.

    The second look reads ``ix_task_take`` in its order and stops at the first free row (so its order
    has exactly that index's columns: a tie-break column more would sort the whole queue). The first
    reads only the overdue rows through ``ix_task_queue_id_state_deadline`` and sorts those: its
    priority is an expression (``priority + 0``) on purpose, so that no planner is tempted to walk
    the take index in order and filter on the deadline, i.e. to read every Created task of the queue
    when none is overdue.
    """
    base = sa.select(Task).where(Task.queue_id == queue_id, Task.state == S.CREATED)
    overdue = (
        base.where(Task.deadline < now)
        .order_by((sa.type_coerce(Task.priority, sa.Integer) + 0).desc(), Task.created_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    normal = base.order_by(Task.priority.desc(), Task.created_at).limit(1).with_for_update(skip_locked=True)
    return overdue, normal


async def _take_once(
    session: AsyncSession, queue_id: uuid.UUID, values: dict[str, Any], now: datetime
) -> Task | None:
    overdue, normal = _candidates(queue_id, now)
    if dialect_of(session) == "postgresql":
        # One round trip: COALESCE evaluates its sub-selects lazily (each an InitPlan), so the second
        # look runs only when no overdue task is free; each skips rows other takers hold.
        ids = [q.with_only_columns(Task.id).scalar_subquery() for q in (overdue, normal)]
        stmt = (
            sa.update(Task)
            .where(Task.id == sa.func.coalesce(*ids), Task.state == S.CREATED)
            .values(**values, lock_token=Task.lock_token + 1)
            .returning(Task)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
        return (await session.execute(stmt)).scalars().first()
    # MariaDB can neither UPDATE a table it reads in a sub-select nor return updated rows: read the
    # best free row under lock, then update it (the lock is ours until the commit).
    fresh = {"populate_existing": True}  # the row as locked now, not as this session saw it before
    task = (await session.execute(overdue, execution_options=fresh)).scalars().first()
    if task is None:
        task = (await session.execute(normal, execution_options=fresh)).scalars().first()
    if task is None:
        return None
    token = task.lock_token + 1
    await session.execute(
        sa.update(Task)
        .where(Task.id == task.id, Task.state == S.CREATED)
        .values(**values, lock_token=token)
        .execution_options(synchronize_session=False)
    )
    for key, value in {**values, "lock_token": token}.items():
        set_committed_value(task, key, value)
    return task


async def take_next(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    queue: Queue,
    robot_id: uuid.UUID,
    job_id: uuid.UUID | None,
    lock_s: int | None = None,
) -> Task | None:
    """Give the queue's best free task to ``robot_id``, or None when none is free.

    Best: overdue (deadline passed) first, then priority, then age. The task becomes In Progress,
    locked by the robot (and job) until ``lock_expires_at``, with ``lock_token`` one more. Postponed
    tasks whose "delay until" passed are made Created first when nothing else is free (the scheduler
    does so within its sweep period anyway).
    """
    if queue.account_id != account_id:
        raise TaskError("queue_not_found", "no such queue", field="queue")
    seconds = lock_seconds(lock_s)
    now = utcnow()
    values = {
        "state": S.IN_PROGRESS,
        "lock_robot_id": robot_id,
        "lock_job_id": job_id,
        "lock_expires_at": now + timedelta(seconds=seconds),
        "started_at": now,
        "ended_at": None,
        "updated_at": now,
    }
    task = await _take_once(session, queue.id, values, now)
    if task is None and await release_postponed(session, now=now, queue_id=queue.id, limit=100):
        now = after(now)  # so the history keeps its order
        values.update(lock_expires_at=now + timedelta(seconds=seconds), started_at=now, updated_at=now)
        task = await _take_once(session, queue.id, values, now)
    if task is None:
        return None
    event(
        session,
        account_id=account_id,
        task_id=task.id,
        kind=TaskEventKind.STATE,
        actor=Actor.robot(robot_id),
        at=now,
        from_state=S.CREATED,
        to_state=S.IN_PROGRESS,
        note=f"taken by job {job_id}" if job_id is not None else None,
    )
    return task


# Holding the lock --------------------------------------------------------------------------------


def _held(
    account_id: uuid.UUID, task_id: uuid.UUID, token: int, robot_id: uuid.UUID, now: datetime
) -> tuple[sa.ColumnElement[bool], ...]:
    """The guard of every write by the task's lock holder."""
    return (
        Task.id == task_id,
        Task.account_id == account_id,
        Task.state == S.IN_PROGRESS,
        Task.lock_token == token,
        Task.lock_robot_id == robot_id,
        Task.lock_expires_at > now,
    )


def _check_token(token: Any) -> int:
    if isinstance(token, bool) or not isinstance(token, int) or token < 0:
        raise TaskError("invalid", "the lock token is the number given with the task", field="lock_token")
    return token


async def _refusal(
    session: AsyncSession, account_id: uuid.UUID, task_id: uuid.UUID, token: int, robot_id: uuid.UUID
) -> TaskError:
    """Why a guarded write by a lock holder matched nothing."""
    row = (
        await session.execute(
            sa.select(Task.state, Task.lock_token, Task.lock_robot_id, Task.lock_expires_at).where(
                Task.id == task_id, Task.account_id == account_id
            )
        )
    ).one_or_none()
    if row is None:
        return TaskError("task_not_found", f"task {task_id} does not exist", field="task_id")
    if row.state != S.IN_PROGRESS:
        return TaskError(
            "not_in_progress", f"the task is {row.state.value}, not In Progress", field="task_id"
        )
    if row.lock_token != token or row.lock_robot_id != robot_id:
        return TaskError(
            "stale_token",
            "the task's lock was given to another taker since; this token is stale",
            field="lock_token",
        )
    return TaskError("stale_token", "the lock on this task expired", field="lock_token")


async def _write_held(
    session: AsyncSession,
    account_id: uuid.UUID,
    task_id: uuid.UUID,
    token: int,
    robot_id: uuid.UUID,
    now: datetime,
    **values: Any,
) -> None:
    """Set ``values`` (and ``updated_at``) on the task if the robot holds its lock, else raise why not."""
    result = await session.execute(
        sa.update(Task)
        .where(*_held(account_id, task_id, token, robot_id, now))
        .values(**values, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise await _refusal(session, account_id, task_id, token, robot_id)


async def renew_lock(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    task_id: uuid.UUID,
    token: int,
    robot_id: uuid.UUID,
    lock_s: int | None = None,
) -> datetime:
    """Extend the robot's lock on the task to ``now + lock_s``; returns the new expiry."""
    token = _check_token(token)
    seconds = lock_seconds(lock_s)
    now = utcnow()
    expires = now + timedelta(seconds=seconds)
    await _write_held(session, account_id, task_id, token, robot_id, now, lock_expires_at=expires)
    return expires


async def progress(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    task_id: uuid.UUID,
    token: int,
    robot_id: uuid.UUID,
    note: str,
) -> None:
    """A progress note of the robot working the task (kept as its latest note and in its history)."""
    token = _check_token(token)
    if not isinstance(note, str) or not note.strip():
        raise TaskError("invalid", "a progress note is a non-empty text", field="note")
    bad = find_bad_text(note)
    if bad is not None:
        raise TaskError("invalid", bad[1], field="note")
    text = note[:TEXT_MAX]
    now = utcnow()
    await _write_held(session, account_id, task_id, token, robot_id, now, progress=text)
    event(
        session,
        account_id=account_id,
        task_id=task_id,
        kind=TaskEventKind.PROGRESS,
        actor=Actor.robot(robot_id),
        at=now,
        note=text,
    )


async def finish(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    task_id: uuid.UUID,
    token: int,
    robot_id: uuid.UUID,
    outcome: TaskState,
    reason: str | None = None,
    output: dict[str, Any] | None = None,
) -> Task | None:
    """End the robot's task as ``outcome`` (Successful, Failed (Application), Failed (Business)).

    Returns the retry task when the queue retries this failure (and the task has retries left).
    The same finish sent again (a robot's journal replays it after a lost acknowledgement) changes
    nothing and answers as the first did.
    """
    token = _check_token(token)
    try:
        outcome = TaskState(outcome)
    except ValueError:
        raise TaskError(
            "invalid", "successful, failed_application or failed_business", field="outcome"
        ) from None
    if outcome not in OUTCOMES:
        raise TaskError(
            "invalid", "a task ends Successful, Failed (Application) or Failed (Business)", field="outcome"
        )
    if reason is not None and (not isinstance(reason, str) or find_bad_text(reason)):
        raise TaskError("invalid", "the reason is a text (no NUL, valid UTF-8)", field="reason")
    if output is not None:
        if not isinstance(output, dict):
            raise TaskError("invalid", "the output is an object of named values", field="output")
        if _json_size(output, "output") > OUTPUT_MAX_BYTES:
            raise TaskError("invalid", f"at most {OUTPUT_MAX_BYTES // 1024} KiB of JSON", field="output")
        bad = find_bad_text(output)
        if bad is not None:
            raise TaskError("invalid", bad[1], field=f"output.{bad[0]}")
    now = utcnow()
    result = await session.execute(
        sa.update(Task)
        .where(*_held(account_id, task_id, token, robot_id, now))
        .values(
            state=outcome,
            ended_at=now,
            lock_expires_at=None,
            output=output,
            error=reason if outcome != S.SUCCESSFUL else None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        done = (
            await session.execute(
                sa.select(Task.state, Task.lock_token, Task.lock_robot_id).where(
                    Task.id == task_id, Task.account_id == account_id
                )
            )
        ).one_or_none()
        if done is not None and (done.state, done.lock_token, done.lock_robot_id) == (
            outcome,
            token,
            robot_id,
        ):
            return await retry_of(session, task_id)  # already finished so: a replay
        raise await _refusal(session, account_id, task_id, token, robot_id)
    actor = Actor.robot(robot_id)
    event(
        session,
        account_id=account_id,
        task_id=task_id,
        kind=TaskEventKind.STATE,
        actor=actor,
        at=now,
        from_state=S.IN_PROGRESS,
        to_state=outcome,
        note=reason,
    )
    if outcome == S.SUCCESSFUL:
        return None
    return await maybe_retry(session, task_id, outcome, actor, after(now))


# Retries -----------------------------------------------------------------------------------------


def retries_on(queue: Any, state: TaskState) -> bool:
    """Whether the queue's flags retry a task that ended in ``state``."""
    if state == S.FAILED_APPLICATION:
        return bool(queue.retry_failed_application)
    if state == S.FAILED_BUSINESS:
        return bool(queue.retry_failed_business)
    if state == S.ABANDONED:
        return bool(queue.retry_abandoned)
    return False


async def retry_of(session: AsyncSession, task_id: uuid.UUID) -> Task | None:
    """The task that retries ``task_id``, if one was made."""
    return (
        (await session.execute(sa.select(Task).where(Task.retry_of_id == task_id).limit(1))).scalars().first()
    )


async def maybe_retry(
    session: AsyncSession, task_id: uuid.UUID, ended: TaskState, actor: Actor, now: datetime
) -> Task | None:
    """After ``task_id`` ended ``ended``: its retry, when the queue's flags and maximum allow one."""
    row = (
        await session.execute(
            sa.select(
                Task,
                Queue.max_retries,
                Queue.retry_failed_application,
                Queue.retry_failed_business,
                Queue.retry_abandoned,
            )
            .join(Queue, Queue.id == Task.queue_id)
            .where(Task.id == task_id)
        )
    ).one_or_none()
    if row is None or not retries_on(row, ended) or row.Task.retry_number >= row.max_retries:
        return None
    return await make_retry(session, row.Task, actor, now)


async def make_retry(
    session: AsyncSession,
    task: Task,
    actor: Actor,
    now: datetime,
    note: str | None = None,
    retry_id: uuid.UUID | None = None,
) -> Task:
    """A new Created task that retries ``task`` (same name, parameters, priority, tags, deadline),
    ``retry_number + 1``. A name held unique in the queue moves to the retry."""
    if task.unique_name is not None:
        await session.execute(
            sa.update(Task)
            .where(Task.id == task.id)
            .values(unique_name=None)
            .execution_options(synchronize_session=False)
        )
        set_committed_value(task, "unique_name", None)
        unique_name: str | None = task.name
    else:
        unique_name = None
    value = {
        "id": retry_id or uuid.uuid4(),
        "account_id": task.account_id,
        "queue_id": task.queue_id,
        "name": task.name,
        "unique_name": unique_name,
        "description": task.description,
        "comment": "",
        "parameters": dict(task.parameters or {}),
        "priority": task.priority,
        "tags": list(task.tags or []),
        "state": S.CREATED,
        "delay_until": None,
        "deadline": task.deadline,
        "retry_number": task.retry_number + 1,
        "retry_of_id": task.id,
        "lock_token": 0,
        "created_at": now,
        "updated_at": now,
    }
    await session.execute(sa.insert(Task), [value])
    retry = Task(**value)
    event(
        session,
        account_id=task.account_id,
        task_id=task.id,
        kind=TaskEventKind.RETRIED,
        actor=actor,
        at=now,
        note=note or f"retried as retry {retry.retry_number}",
        related_task_id=retry.id,
    )
    event(
        session,
        account_id=task.account_id,
        task_id=retry.id,
        kind=TaskEventKind.CREATED,
        actor=actor,
        at=now,
        to_state=S.CREATED,
        note=f"retry {retry.retry_number} of task {task.id}",
        related_task_id=task.id,
    )
    return retry


# State changes by the orchestrator and by people ---------------------------------------------------

_ENDS = (S.SUCCESSFUL, S.FAILED_APPLICATION, S.FAILED_BUSINESS, S.ABANDONED)

PERSON_CHANGES: dict[TaskState, frozenset[TaskState]] = {
    S.CREATED: frozenset({S.POSTPONED, *_ENDS}),
    S.POSTPONED: frozenset({S.CREATED, S.POSTPONED, *_ENDS}),
    S.IN_PROGRESS: frozenset(_ENDS),
    S.FAILED_APPLICATION: frozenset({S.SUCCESSFUL, S.FAILED_BUSINESS, S.ABANDONED}),
    S.FAILED_BUSINESS: frozenset({S.SUCCESSFUL, S.FAILED_APPLICATION, S.ABANDONED}),
    S.ABANDONED: frozenset({S.SUCCESSFUL, S.FAILED_APPLICATION, S.FAILED_BUSINESS}),
    S.SUCCESSFUL: frozenset(),
}
"""The state changes a person may make (the API's ``PATCH`` of a task), as Sherpa's web app allows:
postpone or resume a waiting task; end a waiting or running task by hand (its robot's lock is then
void); settle a failed or abandoned one. Successful is final. A retry of an ended task is a new task
(``make_retry``), not a change of state. Nothing else is allowed (409)."""

RETRYABLE = frozenset({S.FAILED_APPLICATION, S.FAILED_BUSINESS, S.ABANDONED})
"""States from which a person may ask for a retry."""


async def change_state(
    session: AsyncSession,
    task: Any,
    to_state: TaskState,
    *,
    actor: Actor,
    reason: str | None,
    values: dict[str, Any] | None = None,
    retry: bool = True,
    now: datetime | None = None,
) -> tuple[bool, Task | None]:
    """Move ``task`` (a ``Task`` or a row with id, account_id, state) to ``to_state``, guarded by its
    current state. Returns (changed, its retry). Leaving In Progress clears the lock's expiry, so
    the holder's renew, progress and finish are refused; the token is kept, so a later take still
    makes a new one. A final state retries as the queue says when ``retry``."""
    at = now or utcnow()
    update: dict[str, Any] = {"state": to_state, "updated_at": at}
    if task.state == S.IN_PROGRESS or to_state != S.IN_PROGRESS:
        update["lock_expires_at"] = None
    if to_state in FINAL_TASK_STATES:
        update["ended_at"] = at
        if to_state != S.SUCCESSFUL and reason:
            update["error"] = reason
    if to_state in WAITING:
        update["ended_at"] = None
        update["started_at"] = None
    if values:
        update.update(values)
    result = await session.execute(
        sa.update(Task)
        .where(Task.id == task.id, Task.state == task.state)
        .values(**update)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False, None
    event(
        session,
        account_id=task.account_id,
        task_id=task.id,
        kind=TaskEventKind.STATE,
        actor=actor,
        at=at,
        from_state=task.state,
        to_state=to_state,
        note=reason,
    )
    if retry and to_state in FINAL_TASK_STATES and to_state != S.SUCCESSFUL:
        return True, await maybe_retry(session, task.id, to_state, actor, after(at))
    return True, None


async def release_postponed(
    session: AsyncSession,
    *,
    now: datetime | None = None,
    queue_id: uuid.UUID | None = None,
    limit: int = 100,
) -> int:
    """Postponed tasks whose "delay until" passed become Created (a bounded batch, rows others hold
    skipped). Returns how many."""
    at = now or utcnow()
    stmt = sa.select(Task.id, Task.account_id, Task.state).where(
        Task.state == S.POSTPONED, Task.delay_until <= at
    )
    if queue_id is not None:
        stmt = stmt.where(Task.queue_id == queue_id)
    rows = (await session.execute(stmt.limit(limit).with_for_update(skip_locked=True))).all()
    changed = 0
    for row in rows:
        done, _ = await change_state(
            session, row, S.CREATED, actor=Actor.system(), reason="delay passed", now=at, retry=False
        )
        changed += done
    return changed


JOB_END_FLAGS: dict[JobState, str] = {
    JobState.FAILED: "fail_on_job_failed",
    JobState.STOPPED: "fail_on_job_stopped",
    JobState.INTERRUPTED: "fail_on_job_interrupted",
}
"""The queue flag that says whether a job ending in this state fails its In Progress tasks."""


async def fail_tasks_of_job(
    session: AsyncSession, job_id: uuid.UUID, job_state: JobState, *, now: datetime | None = None
) -> list[Task]:
    """The job ended ``job_state``: its In Progress tasks fail (Failed (Application)), where their
    queue's flag for that end says so, and are retried per the queue. Returns the retries made.

    Tasks of queues whose flag is off keep their lock until it expires (then go back to Created).
    """
    flag_name = JOB_END_FLAGS.get(job_state)
    if flag_name is None:
        return []
    flag = getattr(Queue, flag_name)
    # No lock taken: each change below is guarded by the task's state.
    rows = (
        await session.execute(
            sa.select(Task.id, Task.account_id, Task.state)
            .join(Queue, Queue.id == Task.queue_id)
            .where(Task.lock_job_id == job_id, Task.state == S.IN_PROGRESS, flag.is_(True))
        )
    ).all()
    retries: list[Task] = []
    for row in rows:
        _, retry = await change_state(
            session,
            row,
            S.FAILED_APPLICATION,
            actor=Actor.system(),
            reason=f"its job ended {job_state.value}",
            now=now,
        )
        if retry is not None:
            retries.append(retry)
    return retries
