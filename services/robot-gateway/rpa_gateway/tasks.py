"""Task and resource frames, applied inside the writer's batch transaction (docs/robot-protocol.md 2.12).

Each function takes the batch's session, applies one frame through the shared libs
(``rpa_common.taskflow``, ``rpa_common.resources``) and returns the
reply frame to send after the commit. What the robot caused (an unknown queue, a stale token, a
resource outside its scope) is raised by the libs as ``TaskError`` / ``ResourceError``: the writer
turns it into the reply's ``error`` and keeps the rest of the batch (``reply_error``).

Nothing here logs a frame: a ``credential.value`` reply carries a password, and it goes from the
libs function to the robot's socket and nowhere else.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common import resources, taskflow
from rpa_common.models import Queue, Task
from rpa_common.models.enums import TaskPriority, TaskState
from rpa_common.resources import ResolvedResource, ResourceError
from rpa_common.settings import Settings
from rpa_common.taskflow import TaskError, TaskInput
from rpa_gateway import hotpath, store
from rpa_protocol import (
    CredentialGet,
    CredentialValue,
    ReplyError,
    ResourceGet,
    ResourceSet,
    ResourceValue,
    TakenTask,
    TaskAdd,
    TaskAdded,
    TaskFinish,
    TaskFinished,
    TaskProgress,
    TaskProgressed,
    TaskRenew,
    TaskRenewed,
    TaskTake,
    TaskTaken,
)


class Refusal(Exception):
    """A refusal decided here rather than in the libs (same attributes as ``TaskError``)."""

    def __init__(self, code: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.field = field


DomainError = (TaskError, ResourceError, Refusal)
"""What a robot caused: answered in the reply's ``error``, the frame changes nothing."""

_PRIORITY = {"low": TaskPriority.LOW, "normal": TaskPriority.NORMAL, "high": TaskPriority.HIGH}
_PRIORITY_NAME = {v: k for k, v in _PRIORITY.items()}
_OUTCOME = {
    "successful": TaskState.SUCCESSFUL,
    "failed_application": TaskState.FAILED_APPLICATION,
    "failed_business": TaskState.FAILED_BUSINESS,
}

_INDEX = re.compile(r"\[(\d+)\]")

TaskFrame = TaskAdd | TaskTake | TaskRenew | TaskProgress | TaskFinish
ResourceFrame = ResourceGet | ResourceSet | CredentialGet
SharedFrame = TaskFrame | ResourceFrame
Reply = TaskAdded | TaskTaken | TaskRenewed | TaskProgressed | TaskFinished | ResourceValue | CredentialValue


@dataclass
class BatchCache:
    """What frames of one batch look up alike, looked up once per batch (queues by name)."""

    queues: dict[tuple[uuid.UUID, str], Queue | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Watched:
    """A resource a connection watches, and what it was last told (to push only real changes)."""

    name: str
    resource_id: uuid.UUID | None
    fingerprint: str


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def reply_error(exc: Exception, frame: SharedFrame) -> ReplyError:
    """The reply's ``error`` for a ``TaskError`` / ``ResourceError``, its field dotted as in
    ``bad_frame`` errors (the libs write ``tasks[3].name``; the frame's field is ``tasks.3.name``)."""
    code = str(getattr(exc, "code", "invalid"))
    detail = str(getattr(exc, "detail", "") or exc)
    where: str | None = getattr(exc, "field", None)
    if where:
        where = _INDEX.sub(r".\1", where).strip(".")
    return ReplyError(code=code, detail=detail, field=where or None)


def refused(frame: SharedFrame, error: ReplyError) -> Reply:
    """The reply of a refused frame: nothing but its ``error``."""
    common: dict[str, Any] = {"seq": frame.seq, "request_id": frame.request_id, "error": error}
    if isinstance(frame, TaskAdd):
        return TaskAdded(**common)
    if isinstance(frame, TaskTake):
        return TaskTaken(**common)
    if isinstance(frame, TaskRenew):
        return TaskRenewed(**common)
    if isinstance(frame, TaskProgress):
        return TaskProgressed(**common)
    if isinstance(frame, TaskFinish):
        return TaskFinished(**common)
    if isinstance(frame, CredentialGet):
        return CredentialValue(name=frame.name, **common)
    return ResourceValue(name=frame.name, **common)


def duplicate(frame: SharedFrame) -> Reply:
    """The reply to a reliable frame applied before (a replay after a lost ack)."""
    common: dict[str, Any] = {"seq": frame.seq, "request_id": frame.request_id, "duplicate": True}
    if isinstance(frame, TaskAdd):
        return TaskAdded(**common)
    if isinstance(frame, TaskProgress):
        return TaskProgressed(**common)
    if isinstance(frame, TaskFinish):
        return TaskFinished(**common)
    assert isinstance(frame, ResourceSet), frame.type  # requests are never replays
    return ResourceValue(name=frame.name, **common)


class QueueNames:
    """Queue names the hot path resolved lately, across batches, for ``QUEUE_NAME_TTL_S``: a take
    skips the lookup of its queue. Only found queues are kept (an unknown name is looked up each
    time, so a queue created a moment ago is found at once). A queue renamed or deleted within the
    TTL: its old name still takes for that long, from a queue that then has no tasks left (deleted)
    or the same tasks (renamed) - what a robot that asked a moment earlier would have got."""

    def __init__(self) -> None:
        self._names: dict[tuple[uuid.UUID, str], tuple[hotpath.QueueRef, float]] = {}

    async def get(
        self, session: AsyncSession, cache: BatchCache, account_id: uuid.UUID, name: str
    ) -> hotpath.QueueRef:
        key = (account_id, name)
        hit = self._names.get(key)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        queue = await queue_of(session, cache, account_id, name)
        ref = hotpath.QueueRef(queue.id, queue.account_id, queue.name)
        if len(self._names) > 10_000:
            self._names.clear()
        self._names[key] = (ref, now + QUEUE_NAME_TTL_S)
        return ref


QUEUE_NAME_TTL_S = 2.0


async def queue_of(session: AsyncSession, cache: BatchCache, account_id: uuid.UUID, name: str) -> Queue:
    key = (account_id, name)
    if key not in cache.queues:
        cache.queues[key] = await taskflow.queue_by_name(session, account_id, name)
    queue = cache.queues[key]
    if queue is None:
        raise Refusal("queue_not_found", f"no queue named {name!r}", field="queue")
    return queue


def taken_reply(frame: TaskTake, queue: hotpath.QueueRef | Queue, t: hotpath.Taken) -> TaskTaken:
    """``task.taken`` for a task given by ``hotpath.take_many``."""
    task = TakenTask(
        id=t.id,
        queue=queue.name,
        name=t.name,
        description=t.description,
        parameters=t.parameters,
        priority=_PRIORITY_NAME.get(TaskPriority(t.priority), "normal"),
        tags=[str(x) for x in t.tags],
        deadline=_aware(t.deadline),
        retry_number=t.retry_number,
        lock_token=t.lock_token,
        lock_expires_at=t.lock_expires_at,
    )
    return TaskTaken(seq=frame.seq, request_id=frame.request_id, task=task)


def taken_task(queue: Queue, task: Task) -> TakenTask:
    expires = _aware(task.lock_expires_at)
    assert expires is not None, "take_next sets the lock's expiry"
    return TakenTask(
        id=task.id,
        queue=queue.name,
        name=task.name,
        description=task.description or "",
        parameters=dict(task.parameters or {}),
        priority=_PRIORITY_NAME.get(TaskPriority(task.priority), "normal"),
        tags=[str(t) for t in (task.tags or [])],
        deadline=_aware(task.deadline),
        retry_number=int(task.retry_number or 0),
        lock_token=int(task.lock_token),
        lock_expires_at=expires,
    )


async def apply_task_frame(
    session: AsyncSession,
    robot: store.RobotIdentity,
    frame: TaskFrame,
    cache: BatchCache,
) -> Reply:
    """One task frame; raises ``TaskError`` for what the robot caused."""
    account_id = robot.account_id
    common: dict[str, Any] = {"seq": frame.seq, "request_id": frame.request_id}
    if isinstance(frame, TaskTake):
        queue = await queue_of(session, cache, account_id, frame.queue)
        task = await taskflow.take_next(
            session,
            account_id=account_id,
            queue=queue,
            robot_id=robot.id,
            job_id=frame.job_id,
            lock_s=frame.lock_s,
        )
        return TaskTaken(**common, task=taken_task(queue, task) if task is not None else None)
    if isinstance(frame, TaskFinish):
        retry = await taskflow.finish(
            session,
            account_id=account_id,
            task_id=frame.task_id,
            token=frame.lock_token,
            robot_id=robot.id,
            outcome=_OUTCOME[frame.outcome],
            reason=frame.reason,
            output=frame.output,
        )
        return TaskFinished(**common, retry_task_id=retry.id if retry is not None else None)
    if isinstance(frame, TaskAdd):
        queue = await queue_of(session, cache, account_id, frame.queue)
        items = [
            TaskInput(
                name=t.name,
                parameters=dict(t.parameters),
                priority=_PRIORITY[t.priority],
                tags=list(t.tags),
                deadline=t.deadline,
                delay_until=t.delay_until,
                description=t.description,
            )
            for t in frame.tasks
        ]
        added = await taskflow.add_tasks(
            session, account_id=account_id, queue=queue, items=items, robot_id=robot.id, job_id=frame.job_id
        )
        return TaskAdded(**common, task_ids=[t.id for t in added])
    if isinstance(frame, TaskRenew):
        expires = await taskflow.renew_lock(
            session,
            account_id=account_id,
            task_id=frame.task_id,
            token=frame.lock_token,
            robot_id=robot.id,
            lock_s=frame.lock_s,
        )
        return TaskRenewed(**common, lock_expires_at=_aware(expires))
    await taskflow.progress(
        session,
        account_id=account_id,
        task_id=frame.task_id,
        token=frame.lock_token,
        robot_id=robot.id,
        note=frame.note,
    )
    return TaskProgressed(**common)


def resource_fields(resolved: ResolvedResource) -> dict[str, Any]:
    """What a robot is told about a resource: never a password (``credential.get`` only)."""
    return {
        "name": resolved.name,
        "kind": resolved.kind.value,
        "text": resolved.text,
        "login": resolved.login,
        "expires_at": _aware(resolved.expires_at),
        "expired": bool(resolved.expired),
        "calendar": resolved.calendar,
    }


def fingerprint(fields: dict[str, Any] | None, error: ReplyError | None = None) -> str:
    """A short digest of what the robot was told: a watch pushes only when it changes."""
    doc = {"error": error.code if error else None, **(fields or {})}
    text = json.dumps(doc, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


async def apply_resource_frame(
    session: AsyncSession,
    settings: Settings,
    robot: store.RobotIdentity,
    frame: ResourceFrame,
) -> tuple[Reply, Watched | None]:
    """One resource frame: its reply, and the watch it asks for (``resource.get`` with ``watch``)."""
    common: dict[str, Any] = {"seq": frame.seq, "request_id": frame.request_id}
    if isinstance(frame, CredentialGet):
        resolved, password = await resources.credential_for_robot(
            session,
            settings,
            account_id=robot.account_id,
            robot_id=robot.id,
            name=frame.name,
            client=(robot.client_address, robot.user_agent),
        )
        return CredentialValue(
            **common,
            name=resolved.name,
            login=resolved.login,
            password=password,
            expires_at=_aware(resolved.expires_at),
            expired=bool(resolved.expired),
        ), None
    if isinstance(frame, ResourceSet):
        resolved = await resources.set_text_for_robot(
            session,
            account_id=robot.account_id,
            robot_id=robot.id,
            name=frame.name,
            value=frame.value,
            client=(robot.client_address, robot.user_agent),
        )
    else:
        resolved = await resources.resolve_for_robot(
            session, account_id=robot.account_id, robot_id=robot.id, name=frame.name
        )
    fields = resource_fields(resolved)
    watch = None
    if isinstance(frame, ResourceGet) and frame.watch:
        watch = Watched(frame.name, resolved.resource_id, fingerprint(fields))
    return ResourceValue(**common, **fields), watch
