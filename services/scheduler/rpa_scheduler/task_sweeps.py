"""Task sweeps: what happens to tasks because time passed.

- In Progress tasks whose lock expired go back to Created (another robot may take them; the late
  holder's token is stale from now on, as its lock's expiry already made it);
- Postponed tasks whose "delay until" passed become Created;
- tasks Created for longer than their queue's ``created_abandon_s``, or In Progress for longer than
  its ``in_progress_abandon_s``, become Abandoned (and are retried when the queue says so).

Like the job sweeps, each takes one bounded batch under ``FOR UPDATE SKIP LOCKED`` in one
transaction, and every change is guarded by the task's state (``taskflow.change_state``): two
scheduler replicas split the rows, and a row that moved on meanwhile is left alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Queue, Task
from rpa_common.models.base import utcnow
from rpa_common.models.enums import TaskState
from rpa_common.service import ServiceContext
from rpa_common.taskflow import Actor, change_state, release_postponed

log = structlog.get_logger(__name__)

TASK_SWEEP_BATCH = 200

LOCK_EXPIRED = "lock expired"


async def _run(ctx: ServiceContext, work: Callable[[AsyncSession], Awaitable[int]]) -> int:
    return await run_in_transaction(ctx.sessions, work, attempts=ctx.settings.db_retry_attempts)


async def sweep_task_locks(
    ctx: ServiceContext, *, now: datetime | None = None, limit: int = TASK_SWEEP_BATCH
) -> int:
    """In Progress tasks whose lock expired -> Created."""
    moment = now or utcnow()

    async def work(session: AsyncSession) -> int:
        rows = (
            await session.execute(
                sa.select(Task.id, Task.account_id, Task.state)
                .where(Task.state == TaskState.IN_PROGRESS, Task.lock_expires_at < moment)
                .order_by(Task.lock_expires_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
        changed = 0
        for row in rows:
            done, _ = await change_state(
                session, row, TaskState.CREATED, actor=Actor.system(), reason=LOCK_EXPIRED, retry=False
            )
            changed += done
        return changed

    changed = await _run(ctx, work)
    if changed:
        log.info("sweep.task_locks_expired", count=changed)
    return changed


async def sweep_postponed(
    ctx: ServiceContext, *, now: datetime | None = None, limit: int = TASK_SWEEP_BATCH
) -> int:
    """Postponed tasks whose "delay until" passed -> Created."""

    async def work(session: AsyncSession) -> int:
        return await release_postponed(session, now=now or utcnow(), limit=limit)

    changed = await _run(ctx, work)
    if changed:
        log.info("sweep.tasks_released", count=changed)
    return changed


# (queue timeout column, state it applies to, the task column the time counts from)
_ABANDON: tuple[tuple[Any, TaskState, Any], ...] = (
    (Queue.created_abandon_s, TaskState.CREATED, Task.created_at),
    (Queue.in_progress_abandon_s, TaskState.IN_PROGRESS, Task.started_at),
)


async def sweep_abandoned(
    ctx: ServiceContext, *, now: datetime | None = None, limit: int = TASK_SWEEP_BATCH
) -> int:
    """Tasks past their queue's abandon timeout for their state -> Abandoned (retried per the queue)."""
    moment = now or utcnow()

    async def work(session: AsyncSession) -> int:
        changed = 0
        left = limit
        for timeout, state, since in _ABANDON:
            # Few queues set a timeout; one indexed look per queue (the cut-off differs per queue).
            queues = (
                await session.execute(sa.select(Queue.id, timeout.label("timeout_s")).where(timeout > 0))
            ).all()
            for queue in queues:
                if left <= 0:
                    return changed
                cutoff = moment - timedelta(seconds=queue.timeout_s)
                rows = (
                    await session.execute(
                        sa.select(Task.id, Task.account_id, Task.state)
                        .where(Task.queue_id == queue.id, Task.state == state, since < cutoff)
                        .limit(left)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
                for row in rows:
                    done, _ = await change_state(
                        session,
                        row,
                        TaskState.ABANDONED,
                        actor=Actor.system(),
                        reason=f"{state.value} for longer than {queue.timeout_s} s",
                        now=moment,
                    )
                    changed += done
                left -= len(rows)
        return changed

    changed = await _run(ctx, work)
    if changed:
        log.info("sweep.tasks_abandoned", count=changed)
    return changed


TASK_SWEEPS: tuple[tuple[str, Callable[..., Awaitable[int]]], ...] = (
    ("task_locks", sweep_task_locks),
    ("tasks_postponed", sweep_postponed),
    ("tasks_abandoned", sweep_abandoned),
)
