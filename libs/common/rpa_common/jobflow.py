"""The job state machine of BRIEF.md, shared by the API, the scheduler and the gateway.

Every transition is a guarded ``UPDATE ... WHERE id = :id AND state IN (:expected) [AND attempt =
:attempt]``: a late or duplicate message matches no row and changes nothing. A transition that
happened is recorded as a ``job_event`` (time, actor, reason) in the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common import events
from rpa_common.models import Job, JobEvent, Robot, Trigger
from rpa_common.models.base import utcnow
from rpa_common.models.enums import JobPriority, JobSource, JobState, TriggerKind
from rpa_common.nats.messages import JobCreated, JobStateChanged
from rpa_common.taskflow import JOB_END_FLAGS, Actor, fail_tasks_of_job

S = JobState

# Which states each state may be left for. Anything else is refused.
ALLOWED: dict[JobState, frozenset[JobState]] = {
    S.PENDING: frozenset({S.STARTING, S.STOPPED, S.INTERRUPTED, S.FAILED}),
    S.STARTING: frozenset(
        {S.RUNNING, S.PENDING, S.STOPPING, S.INTERRUPTING, S.FAILED, S.STOPPED, S.INTERRUPTED, S.SUCCESSFUL}
    ),
    S.RUNNING: frozenset({S.SUCCESSFUL, S.FAILED, S.STOPPING, S.INTERRUPTING, S.PENDING}),
    S.STOPPING: frozenset({S.STOPPED, S.SUCCESSFUL, S.FAILED, S.INTERRUPTING, S.PENDING}),
    S.INTERRUPTING: frozenset({S.INTERRUPTED, S.FAILED, S.SUCCESSFUL, S.STOPPED, S.PENDING}),
    S.SUCCESSFUL: frozenset(),
    S.FAILED: frozenset(),
    S.STOPPED: frozenset(),
    S.INTERRUPTED: frozenset(),
}


def sources_for(to_state: JobState, among: Iterable[JobState] | None = None) -> list[JobState]:
    """States from which ``to_state`` may be reached (optionally narrowed to ``among``)."""
    allowed = [s for s, targets in ALLOWED.items() if to_state in targets]
    if among is not None:
        wanted = set(among)
        allowed = [s for s in allowed if s in wanted]
    return allowed


@dataclass(frozen=True)
class Transition:
    """What happened (for the caller to publish after commit)."""

    job_id: uuid.UUID
    account_id: uuid.UUID
    process_id: uuid.UUID
    robot_id: uuid.UUID | None
    from_state: JobState
    to_state: JobState
    attempt: int
    at: datetime
    deadline_at: datetime | None = None
    """The earliest ``stop_at`` / ``interrupt_at`` the transition set."""
    created: tuple[JobCreated, ...] = ()
    """Jobs its end started (job completion triggers): ``JOB_CREATED`` to publish after the commit."""

    def message(self) -> JobStateChanged:
        return JobStateChanged(
            account_id=self.account_id,
            job_id=self.job_id,
            process_id=self.process_id,
            robot_id=self.robot_id,
            from_state=self.from_state,
            to_state=self.to_state,
            attempt=self.attempt,
            at=self.at,
            deadline_at=self.deadline_at,
        )


async def transition(
    session: AsyncSession,
    job_id: uuid.UUID,
    to_state: JobState,
    *,
    expected: Iterable[JobState] | None = None,
    attempt: int | None = None,
    actor: Actor,
    reason: str | None = None,
    values: dict[str, Any] | None = None,
    locked: Any = None,
    flush: bool = True,
) -> Transition | None:
    """Move a job to ``to_state`` if it is in one of ``expected`` (default: every allowed source).

    Returns the transition, or None when the guard did not match (the job moved on already).
    Final states also free the robot (``robot.current_job_id``) in the same transaction; Failed,
    Stopped and Interrupted also fail the job's In Progress tasks per their queues' flags.
    ``locked``: the job's row (``locked_row``'s columns) when the caller holds its lock already.
    ``flush=False`` leaves the history entry to the session's next flush: a caller moving many
    jobs in one transaction gets one multi-row insert instead of one per job.
    """
    sources = sources_for(to_state, expected)
    if not sources:
        return None
    now = utcnow()
    # Read the row under lock to learn its previous state; the guarded UPDATE below decides.
    row = locked if locked is not None else await locked_row(session, job_id)
    if row is None or row.state not in sources or (attempt is not None and row.attempt != attempt):
        return None
    update_values: dict[str, Any] = {"state": to_state, "updated_at": now}
    if to_state.is_final:
        update_values.setdefault("ended_at", now)
        update_values["lease_expires_at"] = None
    if values:
        update_values.update(values)
    stmt = sa.update(Job).where(Job.id == job_id, Job.state == row.state)
    if attempt is not None:
        stmt = stmt.where(Job.attempt == attempt)
    result = await session.execute(stmt.values(**update_values).execution_options(synchronize_session=False))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    new_attempt = int(update_values.get("attempt", row.attempt))
    session.add(
        JobEvent(
            account_id=row.account_id,
            job_id=job_id,
            from_state=row.state,
            to_state=to_state,
            attempt=new_attempt,
            at=now,
            actor_type=actor.type,
            actor_id=actor.id,
            reason=(reason or None) and reason[:1000],
        )
    )
    robot_id = update_values.get("robot_id", row.robot_id)
    events.record(
        session,
        "job.state",
        account_id=row.account_id,
        object_id=job_id,
        at=now,
        data={
            "job_id": str(job_id),
            "process_id": str(row.process_id),
            "robot_id": robot_id and str(robot_id),
            "from_state": row.state.value,
            "to_state": to_state.value,
            "attempt": new_attempt,
        },
    )
    if (to_state.is_final or to_state == S.PENDING) and row.robot_id is not None:
        await session.execute(
            sa.update(Robot)
            .where(Robot.id == row.robot_id, Robot.current_job_id == job_id)
            .values(current_job_id=None)
            .execution_options(synchronize_session=False)
        )
    if to_state in JOB_END_FLAGS:
        # The job's In Progress tasks fail (and retry) as their queues' flags for this end say.
        await fail_tasks_of_job(session, job_id, to_state, now=now)
    created: tuple[JobCreated, ...] = ()
    if to_state.is_final:
        created = await _fire_completion_triggers(session, row, job_id, to_state, update_values)
    if flush:
        await session.flush()
    deadlines = [update_values[k] for k in ("stop_at", "interrupt_at") if update_values.get(k) is not None]
    return Transition(
        job_id,
        row.account_id,
        row.process_id,
        robot_id,
        row.state,
        to_state,
        new_attempt,
        now,
        min(deadlines) if deadlines else None,
        created,
    )


async def _fire_completion_triggers(
    session: AsyncSession, row: Any, job_id: uuid.UUID, to_state: JobState, values: dict[str, Any]
) -> tuple[JobCreated, ...]:
    """Start the jobs of the job completion triggers on this job's process and final state, in this
    transaction, each once (fire key ``job:{job_id}``), with this job's outputs as their inputs.

    The common case (no such trigger) costs one indexed lookup (``trigger.source_process_id``).
    """
    # Imported here: triggerflow builds its jobs with this module's helpers.
    from rpa_common import triggerflow

    triggers = (
        (
            await session.execute(
                sa.select(Trigger).where(
                    Trigger.source_process_id == row.process_id,
                    Trigger.account_id == row.account_id,
                    Trigger.kind == TriggerKind.JOB_COMPLETED,
                    Trigger.enabled.is_(True),
                )
            )
        )
        .scalars()
        .all()
    )
    wanted = [t for t in triggers if to_state.value in (t.completion_states or ())]
    if not wanted:
        return ()
    outputs = values.get("output_args")
    if outputs is None:
        outputs = await session.scalar(sa.select(Job.output_args).where(Job.id == job_id))
    occurrences = [
        triggerflow.Occurrence(t, f"job:{job_id}", None, dict(outputs or {}), parent_job_id=job_id)
        for t in wanted
    ]
    outcomes = await triggerflow.fire_many(session, occurrences)
    return tuple(o.message for o in outcomes if o.message is not None)


LOCKED_COLUMNS = (
    Job.id,
    Job.state,
    Job.attempt,
    Job.account_id,
    Job.process_id,
    Job.robot_id,
    Job.stop_after_s,
    Job.interrupt_after_s,
)
"""What transitions read of a locked job (state, attempt, owner, process, robot, deadlines)."""


async def locked_row(session: AsyncSession, job_id: uuid.UUID) -> Any:
    """Lock a job and read ``LOCKED_COLUMNS``."""
    return (
        await session.execute(sa.select(*LOCKED_COLUMNS).where(Job.id == job_id).with_for_update())
    ).one_or_none()


async def create_job(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    process_id: uuid.UUID,
    process_version_id: uuid.UUID,
    source: JobSource,
    actor: Actor,
    reason: str | None,
    robot_id: uuid.UUID | None = None,
    robot_group_id: uuid.UUID | None = None,
    job_id: uuid.UUID | None = None,
    priority: JobPriority = JobPriority.NORMAL,
    input_args: dict[str, Any] | None = None,
    stop_after_s: int | None = None,
    interrupt_after_s: int | None = None,
    max_retries: int = 0,
    trigger_id: uuid.UUID | None = None,
    task_id: uuid.UUID | None = None,
    parent_job_id: uuid.UUID | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    created_by: uuid.UUID | None = None,
) -> Job:
    """The one way to make a job: a Pending job and its first history entry (``None -> Pending``).

    Used by the API (``POST /jobs``), the scheduler's triggers and the gateway's ``job.request``.
    Both rows are flushed here, so a duplicate ``idempotency_key`` (or a re-run that already
    inserted ``job_id``) raises ``IntegrityError`` at this call. ``job_id`` should be made by the
    caller outside its transaction, so that a re-run inserts the same id. The caller publishes
    ``created_message(job)`` after its commit.
    """
    if (robot_id is None) == (robot_group_id is None):
        raise ValueError("a job is for exactly one robot or one robot group")
    now = utcnow()
    job = Job(
        id=job_id or uuid.uuid4(),
        account_id=account_id,
        process_id=process_id,
        process_version_id=process_version_id,
        robot_id=robot_id,
        robot_group_id=robot_group_id,
        trigger_id=trigger_id,
        task_id=task_id,
        parent_job_id=parent_job_id,
        state=JobState.PENDING,
        priority=priority,
        source=source,
        input_args=dict(input_args or {}),
        stop_after_s=stop_after_s,
        interrupt_after_s=interrupt_after_s,
        max_retries=max_retries,
        attempt=0,
        offers=0,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        created_by=created_by,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    record_creation(session, job, actor, reason)
    await session.flush()
    return job


def created_message(job: Job) -> JobCreated:
    """``JOB_CREATED`` for a job made by ``create_job``: published after the commit."""
    return JobCreated(
        account_id=job.account_id,
        job_id=job.id,
        robot_id=job.robot_id,
        robot_group_id=job.robot_group_id,
        created_at=job.created_at,
    )


# Robot reports -----------------------------------------------------------------------------------

ReportedStatus = Literal["running", "progress", "successful", "failed", "stopped", "interrupted"]

REPORTED: dict[str, JobState] = {
    "running": S.RUNNING,
    "successful": S.SUCCESSFUL,
    "failed": S.FAILED,
    "stopped": S.STOPPED,
    "interrupted": S.INTERRUPTED,
}
"""Where a robot's ``job.status`` report takes the job (``progress`` takes it nowhere)."""

# A report the state machine does not allow directly passes through the state a person would have
# asked for first (a script that stopped by itself while Running went through Stopping), so the job
# always ends where the robot says it ended, and its history stays a path of allowed steps.
_VIA: dict[JobState, tuple[JobState, frozenset[JobState]]] = {
    S.STOPPED: (S.STOPPING, frozenset({S.RUNNING})),
    S.INTERRUPTED: (S.INTERRUPTING, frozenset({S.RUNNING, S.STOPPING})),
}


def report_steps(status: str, state: JobState) -> list[JobState]:
    """The transitions, in order, that a robot's report of ``status`` makes from ``state``.

    ``[]`` when it makes none (``progress``; ``running`` for a job no longer Starting; a job
    already final). Each step is still applied through ``transition`` with the report's attempt.
    ``ValueError`` for a status that is not a report.
    """
    if status == "progress":
        return []
    target = REPORTED.get(status)
    if target is None:
        raise ValueError(f"not a job report: {status!r}")
    if state.is_final:
        return []
    if target == S.RUNNING:
        return [S.RUNNING] if state == S.STARTING else []
    via = _VIA.get(target)
    if via is not None and state in via[1]:
        return [via[0], target]
    return [target] if target in ALLOWED[state] else []


def record_creation(session: AsyncSession, job: Job, actor: Actor, reason: str | None = None) -> None:
    """The first history entry of a new job (``None -> Pending``)."""
    session.add(
        JobEvent(
            account_id=job.account_id,
            job_id=job.id,
            from_state=None,
            to_state=job.state,
            attempt=job.attempt,
            at=job.created_at or utcnow(),
            actor_type=actor.type,
            actor_id=actor.id,
            reason=reason,
        )
    )
    events.record(
        session,
        "job.created",
        account_id=job.account_id,
        object_id=job.id,
        at=job.created_at or utcnow(),
        data={
            "job_id": str(job.id),
            "process_id": str(job.process_id),
            "robot_id": job.robot_id and str(job.robot_id),
            "robot_group_id": job.robot_group_id and str(job.robot_group_id),
            "state": job.state.value,
            "source": job.source.value if job.source is not None else None,
        },
    )
