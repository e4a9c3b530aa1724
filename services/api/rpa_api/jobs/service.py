"""Jobs: creation (with idempotency keys), queries, and stop / interrupt requests.

Functions here run inside the request's unit of work and only ``flush``; the router commits through
``Tx.run`` and publishes after the commit. A job has no folder of its own: it is seen through its
process, so a role limited to some folders sees the jobs of the processes in them. Every lookup is
scoped to the caller's account; another account's id is a 404 exactly like an unknown one.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal
from rpa_api.jobs.schemas import JobCreate
from rpa_api.kit.audit import record
from rpa_api.kit.folders import check_visible
from rpa_api.kit.lookup import get_owned
from rpa_common import jobflow
from rpa_common.errors import Conflict, NotFound, Unprocessable
from rpa_common.models import Job, JobEvent, Process, ProcessVersion, Robot, RobotGroup
from rpa_common.models.enums import JobPriority, JobSource, JobState, RobotRole

Command = Literal["stop", "interrupt"]

# What each command does from each state that is not final; a state missing here is a no-op
# (the job is already at least as far: a repeated stop, or a stop after an interrupt).
_COMMAND_TARGETS: dict[Command, dict[JobState, JobState]] = {
    "stop": {
        JobState.PENDING: JobState.STOPPED,
        JobState.STARTING: JobState.STOPPING,
        JobState.RUNNING: JobState.STOPPING,
    },
    "interrupt": {
        JobState.PENDING: JobState.INTERRUPTED,
        JobState.STARTING: JobState.INTERRUPTING,
        JobState.RUNNING: JobState.INTERRUPTING,
        JobState.STOPPING: JobState.INTERRUPTING,
    },
}


def as_utc(value: datetime | None) -> datetime | None:
    """Query times without a zone are taken as UTC (the database stores UTC)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


# Queries -----------------------------------------------------------------------------------------


def jobs_query(principal: Principal) -> sa.Select[Job]:
    """The jobs the caller may see: its account's, and of processes in its folders."""
    stmt = sa.select(Job).where(Job.account_id == principal.account_id)
    if not principal.all_folders:
        stmt = stmt.join(Process, Process.id == Job.process_id).where(
            principal.folder_clause(Process.folder_id)
        )
    return stmt


async def get_job(
    session: AsyncSession, principal: Principal, job_id: uuid.UUID, *, lock: bool = False
) -> Job:
    stmt = jobs_query(principal).where(Job.id == job_id).execution_options(populate_existing=True)
    return await get_owned(session, stmt, "job", job_id, lock=lock, lock_of=Job)


async def history(session: AsyncSession, job_id: uuid.UUID) -> list[JobEvent]:
    """The job's transitions in time order (its creation first, should two share a microsecond)."""
    rows = await session.execute(
        sa.select(JobEvent)
        .where(JobEvent.job_id == job_id)
        .order_by(JobEvent.at, JobEvent.from_state.is_not(None), JobEvent.id)
    )
    return list(rows.scalars())


def list_jobs_query(
    principal: Principal,
    *,
    state: Sequence[JobState] | None = None,
    process_id: uuid.UUID | None = None,
    robot_id: uuid.UUID | None = None,
    robot_group_id: uuid.UUID | None = None,
    source: Sequence[JobSource] | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
) -> sa.Select[Job]:
    created_from, created_to = as_utc(created_from), as_utc(created_to)
    if created_from is not None and created_to is not None and created_from > created_to:
        detail = "created_from is after created_to"
        raise Unprocessable(
            detail,
            errors=[
                {"field": "created_from", "message": detail},
                {"field": "created_to", "message": detail},
            ],
        )
    stmt = jobs_query(principal)
    if state:
        stmt = stmt.where(Job.state.in_(state))
    if process_id is not None:
        stmt = stmt.where(Job.process_id == process_id)
    if robot_id is not None:
        stmt = stmt.where(Job.robot_id == robot_id)
    if robot_group_id is not None:
        stmt = stmt.where(Job.robot_group_id == robot_group_id)
    if source:
        stmt = stmt.where(Job.source.in_(source))
    if created_from is not None:
        stmt = stmt.where(Job.created_at >= created_from)
    if created_to is not None:
        stmt = stmt.where(Job.created_at <= created_to)
    return stmt


SORTABLE = {
    "created_at": Job.created_at,
    "priority": Job.priority,
    "state": Job.state,
    "started_at": Job.started_at,
    "ended_at": Job.ended_at,
}


# Creation ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Created:
    job: Job
    replayed: bool


async def find_by_key(session: AsyncSession, principal: Principal, key: str) -> Job | None:
    stmt = sa.select(Job).where(Job.account_id == principal.account_id, Job.idempotency_key == key)
    return (await session.execute(stmt)).scalar_one_or_none()


async def replay(session: AsyncSession, principal: Principal, existing: Job, request_hash: str) -> Created:
    """The answer to a request whose idempotency key was used before."""
    if existing.request_hash != request_hash:
        raise Conflict("this Idempotency-Key was used with another request body", field="Idempotency-Key")
    # Same body, same process: the caller could see it then; check it still may now.
    job = await get_job(session, principal, existing.id)
    return Created(job, replayed=True)


async def _process_and_version(
    session: AsyncSession, principal: Principal, body: JobCreate
) -> tuple[Process, uuid.UUID]:
    process = (
        await session.execute(
            sa.select(Process).where(
                Process.id == body.process_id,
                Process.account_id == principal.account_id,
                principal.folder_clause(Process.folder_id),
            )
        )
    ).scalar_one_or_none()
    if process is None:
        raise NotFound.of("process", body.process_id, field="process_id")
    if body.process_version_id is None:
        if process.current_version_id is None:
            raise Conflict(f"process {process.name!r} has no current version", field="process_id")
        return process, process.current_version_id
    version = (
        await session.execute(
            sa.select(ProcessVersion.id, ProcessVersion.process_id).where(
                ProcessVersion.id == body.process_version_id,
                ProcessVersion.account_id == principal.account_id,
            )
        )
    ).one_or_none()
    if version is None:
        raise NotFound.of("process version", body.process_version_id, field="process_version_id")
    if version.process_id != process.id:
        raise Unprocessable(
            f"process version {body.process_version_id} is not a version of process {process.id}",
            field="process_version_id",
        )
    return process, version.id


async def _check_target(session: AsyncSession, principal: Principal, body: JobCreate) -> None:
    if body.robot_id is not None:
        robot = (
            await session.execute(
                sa.select(Robot).where(
                    Robot.id == body.robot_id,
                    Robot.account_id == principal.account_id,
                    principal.folder_clause(Robot.folder_id),
                )
            )
        ).scalar_one_or_none()
        if robot is None:
            raise NotFound.of("robot", body.robot_id, field="robot_id")
        if robot.role == RobotRole.COORDINATOR:
            raise Unprocessable(f"robot {robot.name!r} is a coordinator and runs no jobs", field="robot_id")
        if not robot.is_active:
            raise Conflict(f"robot {robot.name!r} is inactive", field="robot_id")
    if body.robot_group_id is not None:
        await check_visible(
            session, principal, RobotGroup, body.robot_group_id, "robot group", "robot_group_id"
        )


async def create_job(
    session: AsyncSession,
    principal: Principal,
    body: JobCreate,
    *,
    job_id: uuid.UUID,
    idempotency_key: str | None,
    request_hash: str,
) -> Created:
    """Create a Pending job with its first history entry and an audit record.

    ``job_id`` is made by the caller outside the transaction: when a commit that was reported lost
    had in fact happened, the re-run finds the job and answers it instead of making a second one.
    """
    already = await session.get(Job, job_id)
    if already is not None and already.account_id == principal.account_id:
        return Created(already, replayed=False)
    if idempotency_key is not None:
        existing = await find_by_key(session, principal, idempotency_key)
        if existing is not None:
            return await replay(session, principal, existing, request_hash)
    process, version_id = await _process_and_version(session, principal, body)
    await _check_target(session, principal, body)
    # A concurrent request with the same idempotency key fails in create_job (unique key); the
    # router answers it from the winner's row.
    job = await jobflow.create_job(
        session,
        job_id=job_id,
        account_id=principal.account_id,
        process_id=process.id,
        process_version_id=version_id,
        robot_id=body.robot_id,
        robot_group_id=body.robot_group_id,
        priority=JobPriority(body.priority),
        source=JobSource.API,
        input_args=body.input_args,
        stop_after_s=body.stop_after_s,
        interrupt_after_s=body.interrupt_after_s,
        max_retries=body.max_retries,
        idempotency_key=idempotency_key,
        request_hash=request_hash if idempotency_key is not None else None,
        created_by=principal.user_id,
        actor=jobflow.Actor(principal.actor_type, principal.user_id),
        reason=f"created by {principal.username}",
    )
    record(
        session,
        principal,
        "create",
        "job",
        job.id,
        {
            "process_id": process.id,
            "process_version_id": version_id,
            "robot_id": body.robot_id,
            "robot_group_id": body.robot_group_id,
            "priority": body.priority,
            "stop_after_s": body.stop_after_s,
            "interrupt_after_s": body.interrupt_after_s,
            "max_retries": body.max_retries,
            # Names only: argument values may hold anything, secrets included.
            "input_arg_names": sorted(body.input_args),
            "idempotency_key": idempotency_key is not None,
        },
    )
    await session.flush()
    return Created(job, replayed=False)


# Stop / interrupt --------------------------------------------------------------------------------


_AWAITING_ROBOT: dict[Command, JobState] = {"stop": JobState.STOPPING, "interrupt": JobState.INTERRUPTING}


@dataclass(frozen=True)
class Controlled:
    job: Job
    command: Command
    transition: jobflow.Transition | None
    """None when the job was already where the command takes it (nothing written)."""

    @property
    def tell_robot(self) -> bool:
        """Whether the job now waits for its robot to carry out this command."""
        return self.job.state == _AWAITING_ROBOT[self.command]


async def control(
    session: AsyncSession, principal: Principal, job_id: uuid.UUID, command: Command
) -> Controlled:
    """Ask a job to stop (soft) or interrupt (hard), recorded with the caller as actor.

    A job that never started ends at once; a started one waits for its robot (Stopping /
    Interrupting). Repeating a command changes nothing; a final job is a 409.
    """
    # The row lock orders this against the gateway's and the scheduler's transitions of the job.
    job = await get_job(session, principal, job_id, lock=True)
    if job.state.is_final:
        raise Conflict(f"job already ended ({job.state.value})")
    target = _COMMAND_TARGETS[command].get(job.state)
    if target is None:
        return Controlled(job, command, None)
    done = await jobflow.transition(
        session,
        job.id,
        target,
        expected=[job.state],
        actor=jobflow.Actor(principal.actor_type, principal.user_id),
        reason=f"{command} requested by {principal.username}",
    )
    if done is None:  # cannot happen under the lock; answer what the job is now
        job = await get_job(session, principal, job_id)
        if job.state.is_final:
            raise Conflict(f"job already ended ({job.state.value})")
        return Controlled(job, command, None)
    record(
        session,
        principal,
        command,
        "job",
        job.id,
        {"state": {"from": done.from_state, "to": done.to_state}},
    )
    await session.flush()
    job = await get_job(session, principal, job_id)
    return Controlled(job, command, done)
