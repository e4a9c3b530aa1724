"""Queues and tasks: rules and queries for people (the API).

Functions here run inside the request's unit of work and only ``flush``. A queue is scoped to the
caller's account and folders; its tasks are reached through it, so another account's queue or task
is a 404. The task state machine itself is ``rpa_common.taskflow``, shared with the gateway and the
scheduler; its ``TaskError`` becomes the matching problem here (``domain_error``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal
from rpa_api.kit.audit import record
from rpa_api.kit.folders import check_folder, check_name_and_folder
from rpa_api.kit.lookup import get_owned
from rpa_api.kit.names import contains, flush_or_conflict, name_taken
from rpa_api.kit.patch import apply_patch, require_not_null
from rpa_api.queues import schemas
from rpa_common import taskflow
from rpa_common.db.engine import dialect_of
from rpa_common.errors import Conflict, DomainError, NotFound, PayloadTooLarge, Unprocessable
from rpa_common.models import Queue, Task, TaskEvent
from rpa_common.models.base import utcnow
from rpa_common.models.enums import FINAL_TASK_STATES, TaskEventKind, TaskPriority, TaskState
from rpa_common.taskflow import Actor, TaskError, TaskInput

S = TaskState


def actor_of(principal: Principal) -> Actor:
    return Actor(principal.actor_type, principal.user_id)


def as_utc(value: datetime | None) -> datetime | None:
    """Times without a zone are taken as UTC (the database stores UTC)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


# Errors ------------------------------------------------------------------------------------------

_BY_STATUS: dict[int, type[DomainError]] = {
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: Unprocessable,
}


def api_field(field: str | None, prefix: str | None = "tasks") -> str | None:
    """A taskflow field (``tasks[3].name``) as the API names fields (``tasks.3.name``); ``prefix=None``
    for a single task (``name``)."""
    if field is None:
        return None
    dotted = field.replace("[", ".").replace("]", "")
    if prefix is None and dotted.startswith("tasks.0."):
        return dotted[len("tasks.0.") :]
    return dotted


def domain_error(err: TaskError, field: str | None = None) -> DomainError:
    cls = _BY_STATUS.get(err.status, Unprocessable)
    return cls(err.detail, field=field if field is not None else err.field, code=err.code)


@contextmanager
def task_errors(prefix: str | None = "tasks") -> Iterator[None]:
    """``TaskError`` raised inside becomes the matching problem (status, detail, field, code)."""
    try:
        yield
    except TaskError as err:
        raise domain_error(err, api_field(err.field, prefix)) from None


# Queues ------------------------------------------------------------------------------------------


def queues_query(principal: Principal) -> sa.Select[Queue]:
    return sa.select(Queue).where(
        Queue.account_id == principal.account_id, principal.folder_clause(Queue.folder_id)
    )


async def get_queue(
    session: AsyncSession, principal: Principal, queue_id: uuid.UUID, *, lock: bool = False
) -> Queue:
    return await get_owned(
        session, queues_query(principal).where(Queue.id == queue_id), "queue", queue_id, lock=lock
    )


def _name_taken_detail(name: str) -> str:
    return f"a queue named {name!r} already exists"


async def create_queue(
    session: AsyncSession, principal: Principal, queue_id: uuid.UUID, body: schemas.QueueCreate
) -> Queue:
    existing = await session.get(Queue, queue_id)
    if existing is not None:
        return existing  # a re-run after a commit that did happen
    await check_folder(session, principal, body.folder_id)
    if await name_taken(session, Queue.name, body.name, Queue.account_id == principal.account_id):
        raise Conflict(_name_taken_detail(body.name), field="name")
    queue = Queue(id=queue_id, account_id=principal.account_id, **body.model_dump())
    session.add(queue)
    await flush_or_conflict(session, _name_taken_detail(body.name), "name")
    record(session, principal, "create", "queue", queue.id, body.model_dump(mode="json"))
    return queue


async def _has_tasks(session: AsyncSession, queue_id: uuid.UUID, *states: TaskState) -> bool:
    stmt = sa.select(Task.id).where(Task.queue_id == queue_id)
    if states:
        stmt = stmt.where(Task.state.in_(states))
    return (await session.scalar(stmt.limit(1))) is not None


async def update_queue(
    session: AsyncSession, principal: Principal, queue_id: uuid.UUID, body: schemas.QueueUpdate
) -> Queue:
    fields = body.model_dump(exclude_unset=True)
    require_not_null(fields, *schemas.QueueUpdate.not_null)
    queue = await get_queue(session, principal, queue_id, lock=True)
    await check_name_and_folder(session, principal, queue, fields, "a queue")
    unique = fields.get("unique_task_names")
    if unique is True and not queue.unique_task_names and await _has_tasks(session, queue.id):
        raise Conflict(
            "duplicate names can be forbidden only while the queue has no tasks", field="unique_task_names"
        )
    if unique is False and queue.unique_task_names:
        await session.execute(
            sa.update(Task)
            .where(Task.queue_id == queue.id, Task.unique_name.is_not(None))
            .values(unique_name=None)
            .execution_options(synchronize_session=False)
        )
    changes = apply_patch(queue, fields)
    if changes:
        await flush_or_conflict(session, "a queue with this name already exists", "name")
        record(session, principal, "update", "queue", queue.id, changes)
    return queue


async def delete_queue(session: AsyncSession, principal: Principal, queue_id: uuid.UUID) -> None:
    queue = await get_queue(session, principal, queue_id, lock=True)
    if await _has_tasks(session, queue.id, S.IN_PROGRESS):
        raise Conflict("robots are working tasks of this queue (In Progress); try again when they end")
    record(session, principal, "delete", "queue", queue.id, {"name": queue.name})
    await session.delete(queue)
    await session.flush()


# Statistics --------------------------------------------------------------------------------------


def _seconds_between(session: AsyncSession, start: Any, end: Any) -> Any:
    if dialect_of(session) == "postgresql":
        return sa.extract("epoch", end - start)
    return sa.func.timestampdiff(sa.literal_column("MICROSECOND"), start, end) / 1_000_000.0


async def stats(session: AsyncSession, queue: Queue, window_s: int) -> schemas.QueueStats:
    now = utcnow()
    since = now - timedelta(seconds=window_s)
    counts = {state.value: 0 for state in TaskState}
    for state, n in await session.execute(
        sa.select(Task.state, sa.func.count()).where(Task.queue_id == queue.id).group_by(Task.state)
    ):
        counts[TaskState(state).value] = int(n)
    ended = (
        await session.execute(
            sa.select(
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(sa.case((Task.state == S.SUCCESSFUL, 1), else_=0)), 0),
                sa.func.avg(_seconds_between(session, Task.started_at, Task.ended_at)),
            ).where(
                Task.queue_id == queue.id,
                Task.ended_at >= since,
                Task.ended_at <= now,
                Task.state.in_(FINAL_TASK_STATES),
            )
        )
    ).one()
    oldest = await session.scalar(
        sa.select(sa.func.min(Task.created_at)).where(Task.queue_id == queue.id, Task.state == S.CREATED)
    )
    oldest = as_utc(oldest)
    return schemas.QueueStats(
        queue_id=queue.id,
        at=now,
        counts=counts,
        window_s=window_s,
        ended=int(ended[0]),
        successful=int(ended[1]),
        throughput_per_min=round(int(ended[0]) / (window_s / 60), 6),
        mean_processing_s=None if ended[2] is None else round(float(ended[2]), 6),
        oldest_waiting_at=oldest,
        oldest_waiting_age_s=None if oldest is None else max(0.0, (now - oldest).total_seconds()),
    )


# Tasks -------------------------------------------------------------------------------------------


def task_input(body: schemas.TaskCreate) -> TaskInput:
    return TaskInput(
        name=body.name,
        description=body.description,
        parameters=body.parameters,
        priority=TaskPriority(body.priority),
        tags=list(body.tags),
        deadline=as_utc(body.deadline),
        delay_until=as_utc(body.delay_until),
    )


async def add_tasks(
    session: AsyncSession,
    principal: Principal,
    queue: Queue,
    items: Sequence[TaskInput],
    ids: Sequence[uuid.UUID],
    *,
    bulk_max: int,
    rerun: bool,
    prefix: str | None = "tasks",
    source: str = "api",
) -> list[Task]:
    """Add ``items`` with the caller-made ``ids``; a re-run finds them added and answers them."""
    if rerun:
        found = (await session.execute(sa.select(Task).where(Task.id.in_(ids[:1])))).scalars().first()
        if found is not None:  # the first run did commit
            rows = (await session.execute(sa.select(Task).where(Task.id.in_(ids)))).scalars().all()
            by_id = {t.id: t for t in rows}
            return [by_id[i] for i in ids if i in by_id]
    with task_errors(prefix):
        tasks = await taskflow.add_tasks(
            session,
            account_id=principal.account_id,
            queue=queue,
            items=items,
            actor=actor_of(principal),
            bulk_max=bulk_max,
            ids=ids,
        )
    record(
        session,
        principal,
        "add_tasks",
        "queue",
        queue.id,
        {"count": len(tasks), "source": source, "names": [t.name for t in tasks[:20]]},
    )
    return tasks


def tasks_query(queue: Queue) -> sa.Select[Task]:
    return sa.select(Task).where(Task.queue_id == queue.id, Task.account_id == queue.account_id)


async def get_task(
    session: AsyncSession,
    principal: Principal,
    queue_id: uuid.UUID,
    task_id: uuid.UUID,
    *,
    lock: bool = False,
) -> tuple[Queue, Task]:
    queue = await get_queue(session, principal, queue_id)
    task = await get_owned(session, tasks_query(queue).where(Task.id == task_id), "task", task_id, lock=lock)
    return queue, task


def _has_tag(session: AsyncSession, tag: str) -> sa.ColumnElement[bool]:
    if dialect_of(session) == "postgresql":
        # The column is plain json; containment is a jsonb operator.
        return sa.cast(Task.tags, JSONB).contains([tag])
    return sa.func.json_contains(Task.tags, json.dumps(tag)) == 1


def _range(
    stmt: sa.Select[Any], column: Any, name: str, start: datetime | None, end: datetime | None
) -> sa.Select[Any]:
    start, end = as_utc(start), as_utc(end)
    if start is not None and end is not None and start > end:
        detail = f"{name}_from is after {name}_to"
        raise Unprocessable(
            detail,
            errors=[{"field": f"{name}_from", "message": detail}, {"field": f"{name}_to", "message": detail}],
        )
    if start is not None:
        stmt = stmt.where(column >= start)
    if end is not None:
        stmt = stmt.where(column <= end)
    return stmt


def list_tasks_query(
    session: AsyncSession,
    queue: Queue,
    *,
    state: Sequence[TaskState] | None = None,
    priority: Sequence[TaskPriority] | None = None,
    tag: Sequence[str] | None = None,
    name: str | None = None,
    deadline_from: datetime | None = None,
    deadline_to: datetime | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    ended_from: datetime | None = None,
    ended_to: datetime | None = None,
) -> sa.Select[Task]:
    stmt = tasks_query(queue)
    if state:
        stmt = stmt.where(Task.state.in_(state))
    if priority:
        stmt = stmt.where(Task.priority.in_(priority))
    for one in tag or ():
        stmt = stmt.where(_has_tag(session, one))
    if name:
        stmt = stmt.where(contains(Task.name, name))
    stmt = _range(stmt, Task.deadline, "deadline", deadline_from, deadline_to)
    stmt = _range(stmt, Task.created_at, "created", created_from, created_to)
    return _range(stmt, Task.ended_at, "ended", ended_from, ended_to)


SORTABLE = {
    "created_at": Task.created_at,
    "updated_at": Task.updated_at,
    "priority": Task.priority,
    "deadline": Task.deadline,
    "name": Task.name,
    "state": Task.state,
    "ended_at": Task.ended_at,
}


async def task_detail(session: AsyncSession, task: Task) -> schemas.TaskDetail:
    await session.flush()  # history entries of a change made in this transaction (no autoflush)
    events = (
        await session.execute(
            sa.select(TaskEvent).where(TaskEvent.task_id == task.id).order_by(TaskEvent.at, TaskEvent.id)
        )
    ).scalars()
    retried_by = await session.scalar(sa.select(Task.id).where(Task.retry_of_id == task.id).limit(1))
    return schemas.TaskDetail.model_validate(
        {
            **schemas.TaskOut.model_validate(task).model_dump(),
            "retried_by_id": retried_by,
            "history": [schemas.TaskEventOut.model_validate(e) for e in events],
        }
    )


_DATA_FIELDS = ("name", "parameters", "priority", "tags", "deadline", "delay_until")


async def update_task(
    session: AsyncSession,
    principal: Principal,
    queue_id: uuid.UUID,
    task_id: uuid.UUID,
    body: schemas.TaskUpdate,
) -> Task:
    """A person's change of a task's data and/or state (``taskflow.PERSON_CHANGES``), recorded in its
    history and the audit trail."""
    fields = body.model_dump(exclude_unset=True)
    require_not_null(fields, *schemas.TaskUpdate.not_null)
    queue, task = await get_task(session, principal, queue_id, task_id, lock=True)
    reason = fields.pop("reason", None)
    target: TaskState | None = fields.pop("state", None)
    if fields.get("priority") is not None:
        fields["priority"] = TaskPriority(fields["priority"])
    now = utcnow()
    with task_errors(prefix=None):
        for name in ("deadline", "delay_until"):
            if name in fields:
                fields[name] = taskflow.check_time(as_utc(fields[name]), f"tasks[0].{name}")
    if target is None and "delay_until" in fields and task.state in taskflow.WAITING:
        delay = fields["delay_until"]
        target = S.POSTPONED if delay is not None and delay > now else S.CREATED
    if target == S.POSTPONED:
        delay = fields.get("delay_until", task.delay_until)
        if delay is None or delay <= now:
            raise Unprocessable("a postponed task needs a delay_until in the future", field="delay_until")
    if (target is not None and target != task.state) or target == S.POSTPONED:
        assert target is not None
        if target not in taskflow.PERSON_CHANGES[task.state]:
            raise Conflict(
                f"a {task.state.value} task cannot be made {target.value} by hand",
                field="state",
                code="bad_state_change",
            )
    for name in _DATA_FIELDS:
        if name in fields and task.state not in taskflow.WAITING:
            raise Conflict(f"{name} changes only while the task waits (Created or Postponed)", field=name)
    # The data fields, checked as a new task's are (text no database stores, sizes).
    if any(name in fields for name in ("name", "parameters", "tags")):
        probe = TaskInput(
            name=fields.get("name", task.name),
            parameters=fields.get("parameters", task.parameters),
            tags=fields.get("tags", task.tags),
            description=fields.get("description", task.description),
        )
        with task_errors(prefix=None):
            checked = taskflow.validate(probe, "tasks[0].")
        for name in ("name", "parameters", "tags"):
            if name in fields:
                fields[name] = checked[name]
    if (
        "name" in fields
        and task.unique_name is not None
        and fields["name"].lower() != task.name.lower()
        and await _unique_taken(session, queue, fields["name"], task.id)
    ):
        raise Conflict(
            f"the queue already has a task named {fields['name']!r}", field="name", code="duplicate_name"
        )
    if "name" in fields and task.unique_name is not None:
        fields["unique_name"] = fields["name"]
    if target == S.CREATED and "delay_until" not in fields:
        fields["delay_until"] = None
    changes = apply_patch(task, fields)
    changes.pop("unique_name", None)
    if changes:
        await flush_or_conflict(session, f"the queue already has a task named {task.name!r}", "name")
        taskflow.event(
            session,
            account_id=task.account_id,
            task_id=task.id,
            kind=TaskEventKind.EDITED,
            actor=actor_of(principal),
            at=now,
            note=f"changed: {', '.join(sorted(changes))}",
        )
    if target is not None and (target != task.state or target == S.POSTPONED):
        before = task.state
        done, _ = await taskflow.change_state(
            session,
            task,
            target,
            actor=actor_of(principal),
            reason=reason,
            retry=False,
            now=taskflow.after(now),
        )
        if not done:  # the row is locked by us: only a concurrent change of state can get here
            raise Conflict("the task changed meanwhile; read it again", field="state")
        changes["state"] = {"from": before.value, "to": target.value}
        if reason:
            changes["reason"] = reason
        await session.refresh(task)
    if changes:
        record(session, principal, "update", "task", task.id, changes)
    return task


async def _unique_taken(session: AsyncSession, queue: Queue, name: str, but: uuid.UUID) -> bool:
    found = await session.scalar(
        sa.select(Task.id)
        .where(
            Task.queue_id == queue.id, Task.id != but, taskflow.name_equals(session, Task.unique_name, name)
        )
        .limit(1)
    )
    return found is not None


async def retry_task(
    session: AsyncSession,
    principal: Principal,
    queue_id: uuid.UUID,
    task_id: uuid.UUID,
    reason: str | None,
    retry_id: uuid.UUID,
) -> Task:
    """A person retries an ended task: a new Created task linked to it (its queue's maximum does not
    apply: a person decided). A task is retried once; its retry may be retried in turn."""
    _, task = await get_task(session, principal, queue_id, task_id, lock=True)
    existing = await taskflow.retry_of(session, task.id)
    if existing is not None:
        if existing.id == retry_id:
            return existing  # a re-run after a commit that did happen
        raise Conflict(f"the task was retried already, by task {existing.id}", field="task_id")
    if task.state not in taskflow.RETRYABLE:
        raise Conflict(
            f"only a failed or abandoned task can be retried; this one is {task.state.value}", field="task_id"
        )
    retry = await taskflow.make_retry(
        session, task, actor_of(principal), utcnow(), note=reason or "retried by hand", retry_id=retry_id
    )
    record(session, principal, "retry", "task", task.id, {"retry_id": str(retry.id), "reason": reason})
    return retry


async def delete_task(
    session: AsyncSession, principal: Principal, queue_id: uuid.UUID, task_id: uuid.UUID
) -> None:
    _, task = await get_task(session, principal, queue_id, task_id, lock=True)
    if task.state == S.IN_PROGRESS:
        raise Conflict("a robot is working this task (In Progress); end it first", field="task_id")
    record(session, principal, "delete", "task", task.id, {"name": task.name, "state": task.state.value})
    await session.delete(task)
    await session.flush()
