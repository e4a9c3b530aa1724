"""The gateway's database work: robot attach/detach, frame application, heartbeats, job offers.

Functions here only ``flush``; the caller runs them through ``run_in_transaction`` and publishes
after the commit. Each is safe to re-run: robot frames are applied under the ``inbound_seq``
guard, job changes go through ``jobflow.transition`` (guarded by state and attempt), log lines are
inserted with insert-ignore on their robot-made ids, and requested jobs carry an idempotency key.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

import sqlalchemy as sa
from asyncpg.pgproto.pgproto import UUID as PgUUID
from pydantic_core import to_json
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rpa_common import jobflow, license_seats, robot_history, triggerflow
from rpa_common.audit import add_audit_record
from rpa_common.db.engine import dialect_of
from rpa_common.jobflow import Actor, Transition, locked_row, transition
from rpa_common.models import (
    Job,
    Process,
    ProcessVersion,
    Robot,
    RobotGroupMember,
    RobotMessage,
    Trigger,
    TriggerFire,
)
from rpa_common.models.base import utcnow
from rpa_common.models.enums import (
    ACTIVE_JOB_STATES,
    ActorType,
    JobSource,
    JobState,
    LogLevel,
    RobotRole,
    RobotStatus,
    TriggerKind,
)
from rpa_common.nats.messages import JobCreated, JobOffer, RobotStatusChanged
from rpa_common.offers import offer_query, to_offer
from rpa_common.security import key_matches, split_key
from rpa_protocol import Hello, JobRequest, JobStatus, LogEntry

ROBOT_KEY_KIND = "rbk"
_LEVELS = {level.name.capitalize(): level for level in LogLevel}


@dataclass(frozen=True)
class RobotIdentity:
    id: uuid.UUID
    account_id: uuid.UUID
    name: str
    is_active: bool
    client_address: str | None = None
    """Where the robot's connection comes from, for its audit records."""
    user_agent: str | None = None


async def authenticate(sessions: async_sessionmaker[AsyncSession], key: str) -> RobotIdentity | None:
    """The robot owning ``key``, or None when the key is malformed, unknown or wrong."""
    prefix = split_key(key, ROBOT_KEY_KIND)
    if prefix is None:
        return None
    async with sessions() as session:
        row = (
            await session.execute(
                sa.select(Robot.id, Robot.account_id, Robot.name, Robot.is_active, Robot.key_hash).where(
                    Robot.key_prefix == prefix
                )
            )
        ).one_or_none()
    if row is None or not key_matches(key, row.key_hash):
        return None
    return RobotIdentity(row.id, row.account_id, row.name, bool(row.is_active))


@dataclass
class Attached:
    inbound_seq: int
    status: RobotStatus
    previous_gateway_id: str | None
    previous_connection_id: uuid.UUID | None
    is_active: bool
    offers: list[JobOffer] = field(default_factory=list)
    unlicensed: str | None = None
    """Why the robot is Unlicensed (it gets no work), or None."""


CONFIRMED_JOB_STATES = (JobState.RUNNING, JobState.STOPPING, JobState.INTERRUPTING)
"""Active states only a robot's own ``job.status`` leads to (Starting -> Running): a heartbeat renews
the lease of these only. A Starting job the robot never confirmed keeps the lease the dispatcher
gave it, so an offer that never arrived ends in a retry or "robot lost", not in a job held forever."""


def _status_for(current_job_id: uuid.UUID | None) -> RobotStatus:
    return RobotStatus.WORKING if current_job_id is not None else RobotStatus.READY


async def attach(
    session: AsyncSession,
    robot_id: uuid.UUID,
    *,
    gateway_id: str,
    connection_id: uuid.UUID,
    hello: Hello,
    lease_s: float,
    license_required: bool = False,
) -> Attached | None:
    """Mark the robot connected through this connection; its own active jobs come back as offers.

    Connecting is a sign of life like a heartbeat: the leases of the jobs the robot confirmed are
    renewed here too (jobs first: the lock order), so a robot that comes back just before its
    lease runs out is not declared lost while it replays its journal."""
    await session.execute(
        sa.update(Job)
        .where(Job.robot_id == robot_id, Job.state.in_(CONFIRMED_JOB_STATES))
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    robot = (
        await session.execute(sa.select(Robot).where(Robot.id == robot_id).with_for_update())
    ).scalar_one_or_none()
    if robot is None:
        return None
    now = utcnow()
    previous = (robot.gateway_id, robot.connection_id)
    status = _status_for(robot.current_job_id)
    unlicensed = None
    # A robot coming back to a job it holds finishes it; the seat check is for taking new work.
    if license_required and robot.current_job_id is None:
        unlicensed = await license_seats.seat_refusal(
            session, account_id=robot.account_id, robot_id=robot_id, role=robot.role, now=now
        )
        if unlicensed is not None:
            status = RobotStatus.UNLICENSED
    await session.execute(
        sa.update(Robot)
        .where(Robot.id == robot_id)
        .values(
            gateway_id=gateway_id,
            connection_id=connection_id,
            connected_at=now,
            last_heartbeat_at=now,
            status=status,
            status_reason=unlicensed,
            machine=hello.machine,
            version=hello.robot_version,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if status != robot.status:
        await robot_history.status_changed(
            session, account_id=robot.account_id, robot_id=robot_id, status=status, at=now
        )
    offers = await own_jobs(session, robot_id)
    return Attached(
        inbound_seq=int(robot.inbound_seq or 0),
        status=status,
        previous_gateway_id=previous[0],
        previous_connection_id=previous[1],
        is_active=bool(robot.is_active),
        offers=offers,
        unlicensed=unlicensed,
    )


async def detach(session: AsyncSession, robot_id: uuid.UUID, connection_id: uuid.UUID) -> bool:
    """Disconnected, unless a newer connection (here or on another replica) took over."""
    now = utcnow()
    result = await session.execute(
        sa.update(Robot)
        .where(Robot.id == robot_id, Robot.connection_id == connection_id, Robot.gateway_id.is_not(None))
        .values(status=RobotStatus.DISCONNECTED, status_reason=None, gateway_id=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    await robot_history.disconnected(session, [robot_id], now)
    return True


async def unlicense_expired(session: AsyncSession, gateway_id: str) -> list[tuple[uuid.UUID, str]]:
    """This gateway's idle robots whose licenses expired (or were removed) become Unlicensed:
    (robot id, why) of each. A robot busy with a job finishes it; it is checked again when idle."""
    rows = (
        await session.execute(
            sa.select(Robot.id, Robot.account_id, Robot.role)
            .where(
                Robot.gateway_id == gateway_id,
                Robot.status == RobotStatus.READY,
                Robot.current_job_id.is_(None),
                Robot.role.in_(list(license_seats.KINDS_FOR_ROLE)),
            )
            .order_by(Robot.id)
        )
    ).all()
    now = utcnow()
    out = []
    for row in rows:
        reason = await license_seats.expiry_refusal(
            session, account_id=row.account_id, role=row.role, now=now
        )
        if reason is None:
            continue
        result = await session.execute(
            sa.update(Robot)
            .where(Robot.id == row.id, Robot.status == RobotStatus.READY, Robot.current_job_id.is_(None))
            .values(status=RobotStatus.UNLICENSED, status_reason=reason, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            await robot_history.status_changed(
                session, account_id=row.account_id, robot_id=row.id, status=RobotStatus.UNLICENSED, at=now
            )
            out.append((row.id, reason))
    return out


async def license_freed(session: AsyncSession, gateway_id: str) -> list[uuid.UUID]:
    """This gateway's idle Unlicensed robots that a seat is free for now (a license installed, a
    robot gone): each one's seat is taken here (status Ready), oldest connection first, with the
    license rows locked as at attach; the robots it found seats for."""
    rows = (
        await session.execute(
            sa.select(Robot.id, Robot.account_id, Robot.role)
            .where(
                Robot.gateway_id == gateway_id,
                Robot.status == RobotStatus.UNLICENSED,
                Robot.current_job_id.is_(None),
                Robot.role.in_(list(license_seats.KINDS_FOR_ROLE)),
            )
            .order_by(Robot.connected_at, Robot.id)
        )
    ).all()
    now = utcnow()
    out: list[uuid.UUID] = []
    full: set[tuple[uuid.UUID, RobotRole]] = set()
    for row in rows:
        if (row.account_id, row.role) in full:
            continue
        refusal = await license_seats.seat_refusal(
            session, account_id=row.account_id, robot_id=row.id, role=row.role, now=now
        )
        if refusal is not None:
            full.add((row.account_id, row.role))
            continue
        result = await session.execute(
            sa.update(Robot)
            .where(Robot.id == row.id, Robot.status == RobotStatus.UNLICENSED, Robot.gateway_id == gateway_id)
            .values(status=RobotStatus.READY, status_reason=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            await robot_history.status_changed(
                session, account_id=row.account_id, robot_id=row.id, status=RobotStatus.READY, at=now
            )
            out.append(row.id)
    return out


async def refresh_status(
    session: AsyncSession, robot_id: uuid.UUID, connection_id: uuid.UUID
) -> RobotStatus | None:
    """Make ``status`` say Working or Ready from ``current_job_id``; the new status if it changed."""
    row = (
        await session.execute(
            sa.select(Robot.account_id, Robot.status, Robot.current_job_id).where(
                Robot.id == robot_id, Robot.connection_id == connection_id
            )
        )
    ).one_or_none()
    if row is None or row.status in (RobotStatus.DISCONNECTED, RobotStatus.UNLICENSED):
        return None
    wanted = _status_for(row.current_job_id)
    if wanted == row.status:
        return None
    now = utcnow()
    result = await session.execute(
        sa.update(Robot)
        .where(Robot.id == robot_id, Robot.connection_id == connection_id, Robot.status == row.status)
        .values(status=wanted, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return None
    await robot_history.status_changed(
        session, account_id=row.account_id, robot_id=robot_id, status=wanted, at=now
    )
    return wanted


async def lock_job(session: AsyncSession, job_id: uuid.UUID) -> Any:
    """Lock a job row before the robot's row: every writer takes job, then robot (no lock cycles).

    The row read under the lock is what ``apply_job_status`` and ``jobflow.transition`` need."""
    return await locked_row(session, job_id)


async def lock_jobs(session: AsyncSession, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    """``lock_job`` for several jobs at once, in id order (the lock order): id -> row."""
    if not job_ids:
        return {}
    rows = (
        await session.execute(
            sa.select(*jobflow.LOCKED_COLUMNS)
            .where(Job.id.in_(sorted(job_ids)))
            .order_by(Job.id)
            .with_for_update()
        )
    ).all()
    return {r.id: r for r in rows}


async def claim_seq(session: AsyncSession, robot_id: uuid.UUID, seq: int) -> bool:
    """True when frame ``seq`` is new (and is now recorded as applied, in this transaction)."""
    result = await session.execute(
        sa.update(Robot)
        .where(Robot.id == robot_id, Robot.inbound_seq < seq)
        .values(inbound_seq=seq)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# Jobs -------------------------------------------------------------------------------------------


async def own_jobs(session: AsyncSession, robot_id: uuid.UUID) -> list[JobOffer]:
    rows = (
        await session.execute(offer_query().where(Job.robot_id == robot_id).order_by(Job.created_at))
    ).all()
    return [to_offer(r) for r in rows]


async def offer_for(
    session: AsyncSession, robot_id: uuid.UUID, job_id: uuid.UUID, attempt: int | None
) -> JobOffer | None:
    stmt = offer_query().where(Job.id == job_id, Job.robot_id == robot_id)
    if attempt is not None:
        stmt = stmt.where(Job.attempt == attempt)
    row = (await session.execute(stmt)).one_or_none()
    return to_offer(row) if row is not None else None


async def may_download(session: AsyncSession, robot_id: uuid.UUID, version_id: uuid.UUID) -> int | None:
    """The package size if the robot has an active job of this version, else None."""
    row = (
        await session.execute(
            sa.select(ProcessVersion.size)
            .join(Job, Job.process_version_id == ProcessVersion.id)
            .where(
                ProcessVersion.id == version_id,
                Job.robot_id == robot_id,
                Job.state.in_(ACTIVE_JOB_STATES),
            )
            .limit(1)
        )
    ).one_or_none()
    return int(row.size) if row is not None else None


async def apply_job_status(
    session: AsyncSession, robot: RobotIdentity, frame: JobStatus, lease_s: float, job: Any
) -> list[Transition]:
    """Apply one ``job.status`` report for (job, attempt) of this robot; the transitions made.

    ``job``: the job's row, locked by ``lock_job`` in this transaction."""
    if job is None or job.robot_id != robot.id or job.attempt != frame.attempt:
        return []  # not this robot's attempt: a late or foreign report changes nothing
    if job.state not in ACTIVE_JOB_STATES:
        return []  # not this robot's attempt, or already over: a late report changes nothing
    actor = Actor(ActorType.ROBOT, robot.id)
    now = utcnow()
    lease = now + timedelta(seconds=lease_s)
    done: list[Transition] = []
    output = frame.output
    if frame.status == "running":
        values: dict[str, Any] = {"started_at": now, "lease_expires_at": lease}
        if job.stop_after_s:
            values["stop_at"] = now + timedelta(seconds=job.stop_after_s)
        if job.interrupt_after_s:
            values["interrupt_at"] = now + timedelta(seconds=job.interrupt_after_s)
        t = await transition(
            session,
            frame.job_id,
            JobState.RUNNING,
            expected=[JobState.STARTING],
            attempt=frame.attempt,
            actor=actor,
            reason="robot started the script",
            values=values,
            locked=job,
        )
        if t is not None:
            done.append(t)
        return done
    if frame.status == "progress":
        values = {"lease_expires_at": lease, "updated_at": now}
        if output is not None:
            values["output_args"] = output
        await session.execute(
            sa.update(Job)
            .where(Job.id == frame.job_id, Job.attempt == frame.attempt, Job.state.in_(ACTIVE_JOB_STATES))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return done
    final_values: dict[str, Any] = {}
    if output is not None:
        final_values["output_args"] = output
    if frame.status == "failed":
        final_values["error"] = (frame.error or "the script failed")[:10_000]
    elif frame.error:
        final_values["error"] = frame.error[:10_000]
    reason = f"robot reported {frame.status}"
    steps = jobflow.report_steps(frame.status, job.state)
    for i, target in enumerate(steps):
        t = await transition(
            session,
            frame.job_id,
            target,
            attempt=frame.attempt,
            actor=actor,
            reason=reason,
            values=final_values if i == len(steps) - 1 else None,
            # After a "via" step the row moved on: read it again (still under this transaction's lock).
            locked=job if i == 0 else None,
        )
        if t is None:
            break
        done.append(t)
    return done


async def fire_robot_trigger(
    session: AsyncSession, robot: RobotIdentity, frame: JobRequest, name: str
) -> tuple[uuid.UUID | None, str | None, JobCreated | None]:
    """A ``job.request`` naming a robot command trigger: the trigger decides process, target,
    priority and arguments (the frame's ``input_args`` are merged over its own).

    The robot may use it when the trigger targets it, or a group it belongs to, or nothing (the job
    then runs on the asking robot; a trigger in an access folder serves the robots of that folder).
    """
    trigger = (
        await session.execute(
            sa.select(Trigger).where(
                Trigger.account_id == robot.account_id,
                Trigger.kind == TriggerKind.ROBOT,
                sa.func.lower(Trigger.name) == name.lower(),
            )
        )
    ).scalar_one_or_none()
    unknown = f"no robot command trigger named {name!r} for this robot"
    if trigger is None:
        return None, unknown, None
    if trigger.robot_id is not None:
        allowed = trigger.robot_id == robot.id
    elif trigger.robot_group_id is not None:
        allowed = (
            await session.scalar(
                sa.select(RobotGroupMember.robot_id).where(
                    RobotGroupMember.group_id == trigger.robot_group_id, RobotGroupMember.robot_id == robot.id
                )
            )
        ) is not None
    else:
        folder = await session.scalar(sa.select(Robot.folder_id).where(Robot.id == robot.id))
        allowed = trigger.folder_id is None or trigger.folder_id == folder
    if not allowed:
        return None, unknown, None
    if not trigger.enabled:
        return None, f"trigger {trigger.name!r} is disabled", None
    target = trigger
    if trigger.robot_id is None and trigger.robot_group_id is None:
        # No target of its own: the job runs on the asking robot. A copy outside the session, so the
        # trigger itself is not changed (triggerflow records its last fire by id).
        target = Trigger(**{c.key: getattr(trigger, c.key) for c in sa.inspect(Trigger).column_attrs})
        target.robot_id = robot.id
    outcome = await triggerflow.fire(
        session,
        target,
        fire_key=_trigger_request_key(frame),
        scheduled_at=None,
        input_args=frame.input_args,
    )
    if outcome.job_id is None:
        return None, outcome.reason or "no job was created", None
    add_audit_record(
        session,
        account_id=robot.account_id,
        kind="robot",
        actor_type=ActorType.ROBOT,
        actor_id=robot.id,
        actor_name=robot.name,
        action="fire",
        object_type="trigger",
        object_id=trigger.id,
        changes={"trigger": trigger.name, "job_id": str(outcome.job_id), "source": JobSource.ROBOT.value},
        client_address=robot.client_address,
        user_agent=robot.user_agent,
    )
    await session.flush()
    return outcome.job_id, None, outcome.message


def _trigger_request_key(frame: JobRequest) -> str:
    return f"robot:{frame.request_id}"


async def existing_request(
    session: AsyncSession, robot: RobotIdentity, frame: JobRequest
) -> uuid.UUID | None:
    """The job a replayed ``job.request`` created the first time, if it created one."""
    if frame.trigger_name is not None:
        return (
            await session.execute(
                sa.select(TriggerFire.job_id)
                .join(Trigger, Trigger.id == TriggerFire.trigger_id)
                .where(
                    Trigger.account_id == robot.account_id,
                    TriggerFire.fire_key == _trigger_request_key(frame),
                    TriggerFire.job_id.is_not(None),
                )
                .limit(1)
            )
        ).scalar_one_or_none()
    return (
        await session.execute(
            sa.select(Job.id).where(
                Job.account_id == robot.account_id, Job.idempotency_key == _request_key(frame)
            )
        )
    ).scalar_one_or_none()


def _request_key(frame: JobRequest) -> str:
    return f"robot-request:{frame.request_id}"


async def create_requested_job(
    session: AsyncSession, robot: RobotIdentity, frame: JobRequest
) -> tuple[uuid.UUID | None, str | None, JobCreated | None]:
    """A job for this robot from a ``job.request``: (job id, error, message to publish)."""
    idem = _request_key(frame)
    existing = await existing_request(session, robot, frame)
    if existing is not None:
        return existing, None, None
    active = (await session.execute(sa.select(Robot.is_active).where(Robot.id == robot.id))).scalar_one()
    if not active:
        return None, "the robot is inactive", None
    if frame.trigger_name is not None:
        return await fire_robot_trigger(session, robot, frame, frame.trigger_name)
    assert frame.process_name is not None  # the frame has exactly one of the two
    process = (
        await session.execute(
            sa.select(Process.id, Process.current_version_id).where(
                Process.account_id == robot.account_id,
                sa.func.lower(Process.name) == frame.process_name.lower(),
            )
        )
    ).one_or_none()
    if process is None:
        return None, f"no process named {frame.process_name!r}", None
    if process.current_version_id is None:
        return None, f"process {frame.process_name!r} has no published version", None
    job = await jobflow.create_job(
        session,
        account_id=robot.account_id,
        process_id=process.id,
        process_version_id=process.current_version_id,
        robot_id=robot.id,
        source=JobSource.ROBOT,
        actor=Actor(ActorType.ROBOT, robot.id),
        reason="requested by the robot",
        input_args=frame.input_args,
        idempotency_key=idem,
    )
    add_audit_record(
        session,
        account_id=robot.account_id,
        kind="robot",
        actor_type=ActorType.ROBOT,
        actor_id=robot.id,
        actor_name=robot.name,
        action="create",
        object_type="job",
        object_id=job.id,
        changes={"process": frame.process_name, "source": JobSource.ROBOT.value},
        client_address=robot.client_address,
        user_agent=robot.user_agent,
    )
    await session.flush()
    return job.id, None, jobflow.created_message(job)


# Logs -------------------------------------------------------------------------------------------


async def _log_jobs(
    session: AsyncSession, batches: list[tuple[RobotIdentity, list[LogEntry]]]
) -> dict[uuid.UUID, tuple[uuid.UUID, uuid.UUID, uuid.UUID, uuid.UUID | None]]:
    """The jobs the lines name: job id -> (its robot, process, version, task), one query for all."""
    job_ids = {e.job_id for _, entries in batches for e in entries if e.job_id is not None}
    if not job_ids:
        return {}
    rows = await session.execute(
        sa.select(Job.id, Job.robot_id, Job.process_id, Job.process_version_id, Job.task_id).where(
            Job.id.in_(job_ids)
        )
    )
    return {r.id: (r.robot_id, r.process_id, r.process_version_id, r.task_id) for r in rows}


def _log_rows(
    batches: list[tuple[RobotIdentity, list[LogEntry]]],
    jobs: dict[uuid.UUID, tuple[uuid.UUID, uuid.UUID, uuid.UUID, uuid.UUID | None]],
    *,
    fields_as_text: bool = False,
) -> list[tuple[Any, ...]]:
    """Rows in the column order of ``LOG_COLUMNS``; ``fields_as_text``: for COPY (``fields`` as JSON
    text, the robot's and account's ids as asyncpg's UUID).

    Built in one pass, one tuple a line: at tens of thousands of lines a second this loop is a
    good part of the gateway's work per line."""
    now = utcnow()
    levels = _LEVEL_NUMBERS
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    for robot, entries in batches:
        robot_id: uuid.UUID = robot.id
        account_id: uuid.UUID = robot.account_id
        if fields_as_text:
            # asyncpg copies its own UUID type as it is; a uuid.UUID costs a call to ``.bytes``.
            robot_id, account_id = PgUUID(robot_id.bytes), PgUUID(account_id.bytes)
        for e in entries:
            fields: Any = e.fields
            if fields is not None and fields_as_text:
                fields = to_json(fields).decode()
            job = jobs.get(e.job_id) if e.job_id is not None else None
            # A job id that is not one of this robot's jobs is not trusted: the line is kept, unlinked.
            if job is None or job[0] != robot_id:
                append(
                    (e.id, account_id, robot_id, None, None, None, None, levels[e.level], e.message, fields, e.at, now, None)
                )  # fmt: skip
            else:
                append(
                    (
                        e.id, account_id, robot_id, job[1], job[2], e.job_id, job[3], levels[e.level],
                        e.message, fields, e.at, now, None,
                    )
                )  # fmt: skip
    return rows


LOG_COLUMNS = (
    "id",
    "account_id",
    "robot_id",
    "process_id",
    "process_version_id",
    "job_id",
    "task_id",
    "level",
    "message",
    "fields",
    "at",
    "received_at",
    "screenshot_id",
)
_LEVEL_NUMBERS = {name: int(level) for name, level in _LEVELS.items()}


async def insert_logs(session: AsyncSession, robot: RobotIdentity, entries: list[LogEntry]) -> None:
    """One multi-row insert; a replayed line (same id) is ignored, not doubled (the isolated path)."""
    await _insert_ignore(session, _log_rows([(robot, entries)], await _log_jobs(session, [(robot, entries)])))


async def _insert_ignore(session: AsyncSession, rows: list[tuple[Any, ...]]) -> None:
    table = cast(sa.Table, RobotMessage.__table__)
    if dialect_of(session) == "postgresql":
        stmt: Any = postgresql.insert(table).on_conflict_do_nothing(index_elements=["id"])
    else:
        stmt = mysql.insert(table).prefix_with("IGNORE")
    await session.execute(stmt, [dict(zip(LOG_COLUMNS, row, strict=True)) for row in rows])


async def store_logs(session: AsyncSession, batches: list[tuple[RobotIdentity, list[LogEntry]]]) -> None:
    """The lines of many log frames at once: COPY on PostgreSQL, a multi-row INSERT IGNORE on MariaDB.

    COPY goes straight into ``robot_message``: a line stored before (same robot-made id, which the
    ``inbound_seq`` guard makes rare: a frame is applied once) fails the COPY with a unique
    violation, the writer re-runs the batch with a savepoint per frame, and there ``insert_logs``
    ignores the duplicate. So the common case costs one COPY and no staging table."""
    postgres = dialect_of(session) == "postgresql"
    rows = _log_rows(batches, await _log_jobs(session, batches), fields_as_text=postgres)
    if not rows:
        return
    if not postgres:
        await _insert_ignore(session, rows)
        return
    connection = await session.connection()
    raw = (await connection.get_raw_connection()).driver_connection
    assert raw is not None
    if not raw.is_in_transaction():
        # SQLAlchemy begins lazily, with its first statement; COPY must run inside that transaction.
        await session.execute(sa.text("SELECT 1"))
    await raw.copy_records_to_table(
        "robot_message",
        records=rows,
        columns=LOG_COLUMNS,
    )


# Heartbeats -------------------------------------------------------------------------------------


async def heartbeat(
    session: AsyncSession, gateway_id: str, robot_ids: list[uuid.UUID], lease_s: float
) -> dict[uuid.UUID, uuid.UUID | None]:
    """Record heartbeats and extend the leases of these robots' confirmed jobs.

    Returns the robots whose row no longer names this gateway, each with the connection the row
    names now: the same connection means the sweep marked the robot Disconnected while its socket
    lived; another one means a newer connection took over. Either way the caller closes the socket.
    """
    now = utcnow()
    # Job rows busy right now (a job report, a dispatch, a sweep) are skipped, not waited for: the
    # next heartbeat comes within a second and leases last far longer. Jobs before robots, in id
    # order: the order everyone uses.
    jobs = (
        (
            await session.execute(
                sa.select(Job.id)
                .where(Job.robot_id.in_(robot_ids), Job.state.in_(CONFIRMED_JOB_STATES))
                .order_by(Job.id)
                .with_for_update(skip_locked=True)
            )
        )
        .scalars()
        .all()
    )
    if jobs:
        await session.execute(
            sa.update(Job)
            .where(Job.id.in_(jobs))
            .values(lease_expires_at=now + timedelta(seconds=lease_s))
            .execution_options(synchronize_session=False)
        )
    # Robot rows are waited for, not skipped: a robot streaming frames has its row locked by the
    # writer most of the time, and skipping it would leave its heartbeats unrecorded until the sweep
    # marks it Disconnected. Waiting is safe: nobody holds a robot row while waiting for a job row
    # (the lock order is job, then robot), and the job rows above were only taken if free.
    robots = (
        (
            await session.execute(
                sa.select(Robot.id)
                .where(Robot.id.in_(robot_ids), Robot.gateway_id == gateway_id)
                .order_by(Robot.id)
                .with_for_update()
            )
        )
        .scalars()
        .all()
    )
    if robots:
        await session.execute(
            sa.update(Robot)
            .where(Robot.id.in_(robots))
            .values(last_heartbeat_at=now)
            .execution_options(synchronize_session=False)
        )
    rows = (
        await session.execute(
            sa.select(Robot.id, Robot.gateway_id, Robot.connection_id).where(Robot.id.in_(robot_ids))
        )
    ).all()
    return {r.id: r.connection_id for r in rows if r.gateway_id != gateway_id}


# Reconciliation ---------------------------------------------------------------------------------


async def jobs_of_gateway(session: AsyncSession, gateway_id: str) -> list[tuple[uuid.UUID, JobOffer]]:
    """(robot id, offer) of every active job whose robot the database says is on this gateway."""
    rows = (
        await session.execute(
            offer_query()
            .add_columns(Job.robot_id)
            .join(Robot, Robot.id == Job.robot_id)
            .where(Robot.gateway_id == gateway_id)
            .order_by(Job.created_at)
        )
    ).all()
    return [(r.robot_id, to_offer(r)) for r in rows]


async def job_owners(
    session: AsyncSession, job_ids: list[uuid.UUID]
) -> dict[uuid.UUID, tuple[JobState, int, uuid.UUID | None]]:
    """(state, attempt, robot) of these jobs, for those that exist (committed)."""
    rows = (
        await session.execute(
            sa.select(Job.id, Job.state, Job.attempt, Job.robot_id).where(Job.id.in_(job_ids))
        )
    ).all()
    return {r.id: (r.state, r.attempt, r.robot_id) for r in rows}


def status_message(robot: RobotIdentity, status: RobotStatus) -> RobotStatusChanged:
    return RobotStatusChanged(account_id=robot.account_id, robot_id=robot.id, status=status, at=utcnow())
