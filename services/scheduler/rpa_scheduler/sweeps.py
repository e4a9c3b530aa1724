"""Recovery sweeps: what the scheduler does because time passed, not because a message came.

Each sweep takes one bounded batch of rows under ``FOR UPDATE SKIP LOCKED`` in one transaction,
so replicas running the same sweep at the same moment split the rows instead of waiting on each
other; messages are published after the commit. A sweep returns how many rows it changed, and the
caller repeats it while a full batch came back.

- robots whose heartbeats stopped -> Disconnected (``ROBOT_STATUS``);
- jobs whose lease ran out -> Failed "robot lost" (or Pending again while retries remain);
  Interrupting -> Interrupted by the orchestrator itself;
- ``stop_at`` passed on Running -> Stopping (+ ``JOB_CONTROL`` stop); ``interrupt_at`` passed ->
  Interrupting (+ ``JOB_CONTROL`` interrupt);
- Starting jobs whose terminal session failed, or whose robot did not connect within
  ``session_connect_timeout_s`` -> Failed with that reason (+ ``CloseSession``);
- tasks: expired locks, postponed tasks due, abandon timeouts (``task_sweeps``).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common import robot_history
from rpa_common.db.uow import run_in_transaction
from rpa_common.dispatch_rules import CONNECTED_STATUSES, LIVE_SESSION_STATES
from rpa_common.jobflow import Actor, Transition, transition
from rpa_common.models import Job, Robot, TerminalServer, TerminalSession, UnattendedAccount
from rpa_common.models.base import utcnow
from rpa_common.models.enums import JobState, RobotStatus, SessionState
from rpa_common.nats import subjects
from rpa_common.nats.messages import (
    CloseSession,
    GatewayCommand,
    JobControl,
    JobCreated,
    RobotStatusChanged,
    SessionStateReport,
)
from rpa_common.offers import offers_for
from rpa_common.service import ServiceContext
from rpa_scheduler.dispatch import (
    Outbox,
    decrypt_session_key,
    open_session_command,
    record_session_state,
)
from rpa_scheduler.task_sweeps import TASK_SWEEP_BATCH, TASK_SWEEPS

log = structlog.get_logger(__name__)

SWEEP_BATCH = 100

ROBOT_LOST = "robot lost"
ROBOT_LOST_RETRY = "robot lost, retrying"

# Forward order of a session's life; failed and ended are final.
_SESSION_RANK = {
    SessionState.REQUESTED: 0,
    SessionState.CONNECTING: 1,
    SessionState.LOGGED_ON: 2,
    SessionState.ROBOT_CONNECTED: 3,
    SessionState.LOGGING_OFF: 4,
    SessionState.ENDED: 5,
    SessionState.FAILED: 5,
}


@dataclass
class SweepResult:
    changed: int = 0
    outbox: Outbox = field(default_factory=Outbox)

    def publish_transition(self, t: Transition | None) -> bool:
        if t is None:
            return False
        self.changed += 1
        self.outbox.add(subjects.JOB_STATE, t.message())
        for created in t.created:  # jobs its end started (job completion triggers)
            self.outbox.add(subjects.JOB_CREATED, created)
        return True


async def _run(ctx: ServiceContext, work: Callable[[AsyncSession], Awaitable[SweepResult]]) -> SweepResult:
    result = await run_in_transaction(ctx.sessions, work, attempts=ctx.settings.db_retry_attempts)
    await result.outbox.flush(ctx)
    return result


# Robots ------------------------------------------------------------------------------------------


async def sweep_heartbeats(
    ctx: ServiceContext, *, now: datetime | None = None, limit: int = SWEEP_BATCH
) -> int:
    """Robots silent for ``heartbeat_interval_s * heartbeat_misses`` become Disconnected."""
    settings = ctx.settings
    cutoff = (now or utcnow()) - timedelta(seconds=settings.heartbeat_interval_s * settings.heartbeat_misses)

    async def work(session: AsyncSession) -> SweepResult:
        out = SweepResult()
        rows = (
            await session.execute(
                sa.select(Robot.id, Robot.account_id)
                .where(
                    Robot.status != RobotStatus.DISCONNECTED,
                    sa.or_(
                        Robot.last_heartbeat_at < cutoff,
                        sa.and_(
                            Robot.last_heartbeat_at.is_(None),
                            sa.or_(Robot.connected_at.is_(None), Robot.connected_at < cutoff),
                        ),
                    ),
                )
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
        at = utcnow()
        for row in rows:
            await session.execute(
                sa.update(Robot)
                .where(Robot.id == row.id, Robot.status != RobotStatus.DISCONNECTED)
                .values(status=RobotStatus.DISCONNECTED, status_reason=None, gateway_id=None, updated_at=at)
                .execution_options(synchronize_session=False)
            )
        await robot_history.disconnected(session, [row.id for row in rows], at)
        for row in rows:
            out.changed += 1
            out.outbox.add(
                subjects.ROBOT_STATUS,
                RobotStatusChanged(
                    account_id=row.account_id, robot_id=row.id, status=RobotStatus.DISCONNECTED, at=at
                ),
            )
        return out

    result = await _run(ctx, work)
    if result.changed:
        log.info("sweep.robots_disconnected", count=result.changed)
    return result.changed


# Leases ------------------------------------------------------------------------------------------


async def _close_live_session(
    session: AsyncSession, job_id: uuid.UUID, reason: str, out: SweepResult
) -> None:
    """Ask the coordinator to close the job's session, if one is still live."""
    rows = (
        await session.execute(
            sa.select(TerminalSession.id, TerminalServer.coordinator_id)
            .join(TerminalServer, TerminalServer.id == TerminalSession.terminal_server_id)
            .where(TerminalSession.job_id == job_id, TerminalSession.state.in_(LIVE_SESSION_STATES))
        )
    ).all()
    for row in rows:
        if row.coordinator_id is not None:
            out.outbox.add(
                subjects.coordinator_inbox(row.coordinator_id), CloseSession(session_id=row.id, reason=reason)
            )


async def sweep_leases(ctx: ServiceContext, *, now: datetime | None = None, limit: int = SWEEP_BATCH) -> int:
    """Jobs whose robot stopped renewing the lease end (or go back to Pending while retries remain)."""
    moment = now or utcnow()

    async def work(session: AsyncSession) -> SweepResult:
        out = SweepResult()
        jobs = (
            await session.execute(
                sa.select(Job.id, Job.state, Job.attempt, Job.max_retries, Job.robot_group_id)
                .where(
                    Job.state.in_(
                        [JobState.STARTING, JobState.RUNNING, JobState.STOPPING, JobState.INTERRUPTING]
                    ),
                    Job.lease_expires_at < moment,
                )
                .order_by(Job.lease_expires_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
        for job in jobs:
            values: dict[str, Any] = {}
            if job.state == JobState.INTERRUPTING:
                to_state = JobState.INTERRUPTED
                reason = "robot unreachable after the interrupt: interrupted by the orchestrator"
            elif job.state in (JobState.STARTING, JobState.RUNNING) and job.attempt <= job.max_retries:
                # A soft or hard stop that was asked for is never retried; a lost run is.
                to_state, reason = JobState.PENDING, ROBOT_LOST_RETRY
                values = {"lease_expires_at": None, "stop_at": None, "interrupt_at": None}
                if job.robot_group_id is not None:
                    values["robot_id"] = None  # any member of the group may take the retry
            else:
                to_state, reason = JobState.FAILED, ROBOT_LOST
                values = {"error": ROBOT_LOST}
            t = await transition(
                session,
                job.id,
                to_state,
                expected=[job.state],
                attempt=job.attempt,
                actor=Actor.system(),
                reason=reason,
                values=values,
            )
            if t is None:
                continue
            out.publish_transition(t)
            await _close_live_session(session, job.id, reason, out)
            if t.to_state == JobState.PENDING:
                out.outbox.add(
                    subjects.JOB_CREATED,
                    JobCreated(account_id=t.account_id, job_id=t.job_id, created_at=t.at),
                )
        return out

    result = await _run(ctx, work)
    if result.changed:
        log.info("sweep.leases_expired", count=result.changed)
    return result.changed


# Deadlines ---------------------------------------------------------------------------------------

DEADLINES: tuple[tuple[Literal["stop", "interrupt"], JobState, tuple[JobState, ...], Any], ...] = (
    ("stop", JobState.STOPPING, (JobState.RUNNING,), Job.stop_at),
    (
        "interrupt",
        JobState.INTERRUPTING,
        (JobState.STARTING, JobState.RUNNING, JobState.STOPPING),
        Job.interrupt_at,
    ),
)
"""(command, target state, states it fires in, deadline column), in the order they are applied."""


async def next_deadline(ctx: ServiceContext) -> datetime | None:
    """The earliest stop or interrupt deadline still to fire (past ones included), if any."""
    async with ctx.sessions() as session:
        found = [
            await session.scalar(sa.select(sa.func.min(column)).where(Job.state.in_(sources)))
            for _, _, sources, column in DEADLINES
        ]
    times = [t for t in found if t is not None]
    return min(times) if times else None


async def sweep_deadlines(
    ctx: ServiceContext, *, now: datetime | None = None, limit: int = SWEEP_BATCH
) -> int:
    """``stop_at`` passed on Running -> Stopping; ``interrupt_at`` passed -> Interrupting.

    Stops first, in the same transaction: a job past both deadlines goes Running -> Stopping ->
    Interrupting, and its robot gets ``job.stop`` before ``job.interrupt`` (the messages go out in
    that order, on one subject), as it would have had the scheduler been on time."""
    moment = now or utcnow()

    async def work(session: AsyncSession) -> SweepResult:
        out = SweepResult()
        for command, target, sources, deadline in DEADLINES:
            due = (
                await session.execute(
                    sa.select(Job.id, Job.state, Job.attempt, Job.robot_id, Job.account_id)
                    .where(Job.state.in_(sources), deadline < moment)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for job in due:
                t = await transition(
                    session,
                    job.id,
                    target,
                    expected=[job.state],
                    attempt=job.attempt,
                    actor=Actor.system(),
                    reason=f"{command} deadline passed",
                )
                if out.publish_transition(t):
                    out.outbox.add(
                        subjects.JOB_CONTROL,
                        JobControl(
                            account_id=job.account_id,
                            job_id=job.id,
                            robot_id=job.robot_id,
                            attempt=job.attempt,
                            command=command,
                        ),
                    )
        return out

    result = await _run(ctx, work)
    if result.changed:
        log.info("sweep.deadlines", count=result.changed)
    return result.changed


# Unconfirmed offers ------------------------------------------------------------------------------


async def _latest_session(session: AsyncSession, job_id: uuid.UUID) -> Any:
    return (
        await session.execute(
            sa.select(
                TerminalSession,
                UnattendedAccount,
                TerminalServer,
                TerminalServer.coordinator_id,
            )
            .join(UnattendedAccount, UnattendedAccount.id == TerminalSession.unattended_account_id)
            .join(TerminalServer, TerminalServer.id == TerminalSession.terminal_server_id)
            .where(TerminalSession.job_id == job_id)
            .order_by(TerminalSession.created_at.desc())
            .limit(1)
        )
    ).one_or_none()


async def _count_offer(session: AsyncSession, job: Any, at: datetime, *, count: bool = True) -> None:
    """Restart the job's confirmation clock (and count one more offer), guarded by state+attempt."""
    values: dict[str, Any] = {"offered_at": at}
    if count:
        values["offers"] = Job.offers + 1
    await session.execute(
        sa.update(Job)
        .where(Job.id == job.id, Job.state == JobState.STARTING, Job.attempt == job.attempt)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


async def _replan(session: AsyncSession, job: Any, reason: str, live: Any, out: SweepResult) -> None:
    """Starting -> Pending for the same job, robot released; a session still requested is given up."""
    values: dict[str, Any] = {"lease_expires_at": None, "offered_at": None, "offers": 0}
    if job.robot_group_id is not None:
        values["robot_id"] = None  # any member of the group may take it
    t = await transition(
        session,
        job.id,
        JobState.PENDING,
        expected=[JobState.STARTING],
        attempt=job.attempt,
        actor=Actor.system(),
        reason=reason,
        values=values,
    )
    if not out.publish_transition(t):
        return
    assert t is not None
    if live is not None:
        ts = live.TerminalSession
        await _set_session_state(session, ts.id, SessionState.FAILED, reason, utcnow())
        if live.coordinator_id is not None:
            out.outbox.add(
                subjects.coordinator_inbox(live.coordinator_id), CloseSession(session_id=ts.id, reason=reason)
            )
    out.outbox.add(
        subjects.JOB_CREATED, JobCreated(account_id=t.account_id, job_id=t.job_id, created_at=t.at)
    )
    log.warning("dispatch.replanned", job_id=str(job.id), attempt=job.attempt, reason=reason)


async def sweep_unconfirmed(
    ctx: ServiceContext, *, now: datetime | None = None, limit: int = SWEEP_BATCH
) -> int:
    """Starting jobs that nobody confirmed in ``dispatch_confirm_timeout_s``: tell again, or plan again.

    Confirmation is the robot's ``running`` report (the job leaves Starting) on the gateway path, and
    the coordinator's first report on the session path. Until then the offer (``GatewayCommand``) or
    the ``OpenSession`` may have been lost with a NATS outage, and the robot's heartbeats keep the
    lease alive: without this sweep such a job would wait forever. Every send is idempotent (the
    gateway and the robot drop an offer of an attempt they hold; the coordinator answers an
    ``OpenSession`` it knows with its state), and after ``dispatch_max_offers`` the job goes back to
    Pending with its robot released. Each step is guarded by state and attempt.
    """
    settings = ctx.settings
    moment = now or utcnow()
    cutoff = moment - timedelta(seconds=settings.dispatch_confirm_timeout_s)
    most = max(1, settings.dispatch_max_offers)

    async def work(session: AsyncSession) -> SweepResult:
        out = SweepResult()
        jobs = (
            await session.execute(
                sa.select(
                    Job.id,
                    Job.account_id,
                    Job.attempt,
                    Job.offers,
                    Job.robot_id,
                    Job.robot_group_id,
                    sa.select(Robot.gateway_id)
                    .where(Robot.id == Job.robot_id)
                    .scalar_subquery()
                    .label("gateway_id"),
                    sa.select(Robot.status).where(Robot.id == Job.robot_id).scalar_subquery().label("status"),
                )
                .where(Job.state == JobState.STARTING, Job.offered_at < cutoff)
                .order_by(Job.offered_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
        offers: list[tuple[str, Any]] = []
        for job in jobs:
            latest = await _latest_session(session, job.id)
            state = latest.TerminalSession.state if latest is not None else None
            if state in (SessionState.CONNECTING, SessionState.LOGGED_ON):
                # The coordinator answered; the robot's connection is sweep_sessions' business.
                await _count_offer(session, job, moment, count=False)
                continue
            requested = latest if state == SessionState.REQUESTED else None
            if job.offers >= most:
                await _replan(session, job, f"not confirmed after {job.offers} offers", requested, out)
                continue
            await _count_offer(session, job, moment)
            out.changed += 1
            if requested is not None:
                ts, ua = latest.TerminalSession, latest.UnattendedAccount
                server = latest.TerminalServer
                if ts.robot_key_encrypted is None or latest.coordinator_id is None or not server.public_key:
                    continue
                key = decrypt_session_key(settings, ts.id, ts.robot_key_encrypted)
                out.outbox.add(
                    subjects.coordinator_inbox(latest.coordinator_id),
                    open_session_command(settings, ts, ua, server, key),
                )
                log.warning("dispatch.open_session_resent", job_id=str(job.id), session_id=str(ts.id))
            elif job.gateway_id is not None and job.status in CONNECTED_STATUSES:
                offers.append((job.gateway_id, job))
            # A robot away from every gateway gets its job when it connects (the gateway offers a
            # robot its own jobs then): only the count goes up.
        if offers:
            found = await offers_for(session, [job.id for _, job in offers])
            for gateway_id, job in offers:
                offer = found.get(job.id)
                if offer is None or offer.attempt != job.attempt:
                    continue
                out.outbox.add(
                    subjects.gateway_inbox(gateway_id),
                    GatewayCommand(
                        robot_id=job.robot_id, kind="offer", job_id=job.id, attempt=job.attempt, offer=offer
                    ),
                )
                log.warning(
                    "dispatch.offer_resent", job_id=str(job.id), attempt=job.attempt, offers=job.offers + 1
                )
        return out

    result = await _run(ctx, work)
    return result.changed


# Terminal sessions -------------------------------------------------------------------------------


async def _fail_starting_job(
    session: AsyncSession, ts_id: uuid.UUID, job_id: uuid.UUID | None, reason: str, out: SweepResult
) -> None:
    """A Starting job whose session failed: Failed with the session's reason, or Pending again
    (the same job, its robot released) while its retry policy allows another attempt."""
    if job_id is None:
        return
    job = (
        await session.execute(
            sa.select(Job.attempt, Job.max_retries, Job.robot_group_id).where(Job.id == job_id)
        )
    ).one_or_none()
    if job is None:
        return
    if job.attempt <= job.max_retries:
        values: dict[str, Any] = {"lease_expires_at": None, "offered_at": None, "offers": 0}
        if job.robot_group_id is not None:
            values["robot_id"] = None
        t = await transition(
            session,
            job_id,
            JobState.PENDING,
            expected=[JobState.STARTING],
            attempt=job.attempt,
            actor=Actor.system(),
            reason=f"{reason}, retrying",
            values=values,
        )
        if out.publish_transition(t):
            assert t is not None
            out.outbox.add(
                subjects.JOB_CREATED, JobCreated(account_id=t.account_id, job_id=t.job_id, created_at=t.at)
            )
        return
    t = await transition(
        session,
        job_id,
        JobState.FAILED,
        expected=[JobState.STARTING],
        attempt=job.attempt,
        actor=Actor.system(),
        reason=reason,
        values={"error": reason},
    )
    out.publish_transition(t)


async def sweep_sessions(
    ctx: ServiceContext, *, now: datetime | None = None, limit: int = SWEEP_BATCH
) -> int:
    """Starting jobs whose session failed or whose robot did not connect in time -> Failed."""
    moment = now or utcnow()
    timeout_s = ctx.settings.session_connect_timeout_s
    cutoff = moment - timedelta(seconds=timeout_s)

    async def work(session: AsyncSession) -> SweepResult:
        out = SweepResult()
        rows = (
            await session.execute(
                sa.select(
                    TerminalSession.id,
                    TerminalSession.job_id,
                    TerminalSession.state,
                    TerminalSession.reason,
                    TerminalServer.coordinator_id,
                )
                .join(Job, Job.id == TerminalSession.job_id)
                .join(TerminalServer, TerminalServer.id == TerminalSession.terminal_server_id)
                .where(
                    Job.state == JobState.STARTING,
                    sa.or_(
                        TerminalSession.state == SessionState.FAILED,
                        sa.and_(
                            TerminalSession.state.in_(
                                [
                                    SessionState.REQUESTED,
                                    SessionState.CONNECTING,
                                    SessionState.LOGGED_ON,
                                    SessionState.ENDED,
                                ]
                            ),
                            TerminalSession.created_at < cutoff,
                        ),
                    ),
                )
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
        for row in rows:
            if row.state == SessionState.FAILED:
                reason = f"session failed: {row.reason or 'no reason given'}"
            else:
                reason = f"robot did not connect within {timeout_s:g} s"
                await _set_session_state(session, row.id, SessionState.FAILED, reason, moment)
                if row.coordinator_id is not None:
                    out.outbox.add(
                        subjects.coordinator_inbox(row.coordinator_id),
                        CloseSession(session_id=row.id, reason=reason),
                    )
            await _fail_starting_job(session, row.id, row.job_id, reason, out)
        return out

    result = await _run(ctx, work)
    if result.changed:
        log.info("sweep.sessions_failed", count=result.changed)
    return result.changed


async def _set_session_state(
    session: AsyncSession, session_id: uuid.UUID, state: SessionState, reason: str | None, at: datetime
) -> bool:
    """Move a session forward only: a late or duplicate report changes nothing."""
    before = [s for s, rank in _SESSION_RANK.items() if rank < _SESSION_RANK[state]]
    # Once the coordinator answered, OpenSession is not sent again: the key at rest goes.
    values: dict[str, object] = {"state": state, "updated_at": utcnow(), "robot_key_encrypted": None}
    if reason is not None:
        values["reason"] = reason[:1000]
    if state == SessionState.LOGGED_ON:
        values["opened_at"] = at
    if state in (SessionState.ENDED, SessionState.FAILED):
        values["closed_at"] = at
    result = await session.execute(
        sa.update(TerminalSession)
        .where(TerminalSession.id == session_id, TerminalSession.state.in_(before))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    # The session.state event, in this transaction (the row is ours now: one primary-key read).
    row = (
        await session.execute(
            sa.select(
                TerminalSession.account_id,
                TerminalSession.robot_id,
                TerminalSession.terminal_server_id,
                TerminalSession.job_id,
            ).where(TerminalSession.id == session_id)
        )
    ).one()
    record_session_state(
        session,
        account_id=row.account_id,
        session_id=session_id,
        robot_id=row.robot_id,
        terminal_server_id=row.terminal_server_id,
        job_id=row.job_id,
        state=state,
        reason=reason,
        at=at,
    )
    return True


async def apply_session_report(ctx: ServiceContext, report: SessionStateReport) -> bool:
    """Store a coordinator's report (forward only); a failed session fails its Starting job."""

    async def work(session: AsyncSession) -> SweepResult:
        out = SweepResult()
        if not await _set_session_state(session, report.session_id, report.state, report.reason, report.at):
            return out
        out.changed = 1
        if report.state == SessionState.FAILED:
            job_id = await session.scalar(
                sa.select(TerminalSession.job_id).where(TerminalSession.id == report.session_id)
            )
            await _fail_starting_job(
                session,
                report.session_id,
                job_id,
                f"session failed: {report.reason or 'no reason given'}",
                out,
            )
        return out

    result = await _run(ctx, work)
    return result.changed > 0


async def sweep_all(ctx: ServiceContext) -> dict[str, int]:
    """Every sweep once, each repeated while it came back with a full batch."""
    counts: dict[str, int] = {}
    for name, fn in (
        ("heartbeats", sweep_heartbeats),
        ("leases", sweep_leases),
        ("deadlines", sweep_deadlines),
        ("sessions", sweep_sessions),
        ("unconfirmed", sweep_unconfirmed),
    ):
        total = 0
        for _ in range(20):
            n = await fn(ctx)
            total += n
            if n < SWEEP_BATCH:
                break
        counts[name] = total
    for name, task_fn in TASK_SWEEPS:
        total = 0
        for _ in range(20):
            n = await task_fn(ctx)
            total += n
            if n < TASK_SWEEP_BATCH:
                break
        counts[name] = total
    return counts
