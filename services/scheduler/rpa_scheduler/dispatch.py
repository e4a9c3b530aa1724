"""The dispatcher: hands Pending jobs to robots (docs/design/dispatch.md, "Dispatch").

One pass takes Pending jobs that some robot could take now, by ``priority DESC, created_at ASC``,
in small batches under ``FOR UPDATE SKIP LOCKED`` (one transaction per batch), so any number of
scheduler replicas can run passes at once: a job locked by one replica is skipped by the others,
and the guarded ``UPDATE robot SET current_job_id = :job WHERE ... current_job_id IS NULL`` makes
a robot take one job even when two replicas pick different jobs for it.

A job for a connected robot goes ``Starting`` and the gateway holding the robot is told to offer it;
a job for an unattended robot that is not connected goes ``Starting`` and the coordinator of its
terminal server is asked to open a session (with a freshly minted robot key, see the design note).
Every message is published after the commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common import events, metrics, robot_history
from rpa_common.db.uow import run_in_transaction
from rpa_common.dispatch_rules import CONNECTED_STATUSES, LIVE_SESSION_STATES
from rpa_common.jobflow import Actor, Transition, transition
from rpa_common.models import (
    Job,
    Robot,
    RobotGroupMember,
    TerminalServer,
    TerminalSession,
    UnattendedAccount,
)
from rpa_common.models.base import utcnow
from rpa_common.models.enums import JobState, RobotRole, RobotStatus, SessionState
from rpa_common.nats import subjects
from rpa_common.nats.messages import GatewayCommand, Message, OpenSession, RdpTarget, session_seal_context
from rpa_common.offers import offers_for
from rpa_common.sealing import seal_json
from rpa_common.secrets import unattended_password
from rpa_common.security import Encryptor, make_key
from rpa_common.service import ServiceContext
from rpa_common.settings import Settings

log = structlog.get_logger(__name__)

BATCH_SIZE = 16
"""Jobs claimed per transaction: small, so locks are held briefly and replicas share the work."""

ROBOT_KEY_KIND = "rbk"

NO_PUBLIC_KEY = (
    "terminal server has no coordinator public key: start its coordinator (it registers its key) "
    "or set public_key on the terminal server"
)


@dataclass
class Outbox:
    """Messages to publish once the transaction that caused them has committed."""

    items: list[tuple[str, Message]] = field(default_factory=list)

    def add(self, subject: str, msg: Message) -> None:
        self.items.append((subject, msg))

    async def flush(self, ctx: ServiceContext) -> None:
        for subject, msg in self.items:
            await ctx.publish(subject, msg.encode())
        self.items.clear()


@dataclass
class BatchResult:
    claimed: int = 0
    started: list[Transition] = field(default_factory=list)
    skipped: list[uuid.UUID] = field(default_factory=list)
    skipped_busy: int = 0
    """Jobs left Pending although a robot looked free: its row was locked (another dispatcher, a
    heartbeat, a report), so one more pass after that commit may place them."""
    outbox: Outbox = field(default_factory=Outbox)
    pending_since: dict[uuid.UUID, datetime] = field(default_factory=dict)
    """When each claimed job last changed while Pending (its becoming Pending: created, or sent
    back for a retry), for ``rpa_dispatch_latency_seconds``."""


def _robot_connected() -> sa.ColumnElement[bool]:
    return sa.and_(Robot.status.in_(CONNECTED_STATUSES), Robot.gateway_id.is_not(None))


def _robot_can_take_work() -> sa.ColumnElement[bool]:
    return sa.and_(Robot.is_active.is_(True), Robot.current_job_id.is_(None))


def _session_capable() -> sa.ColumnElement[bool]:
    """An unattended robot, not connected, whose account's terminal server has a coordinator."""
    has_server = (
        sa.select(sa.literal(1))
        .select_from(UnattendedAccount)
        .join(TerminalServer, TerminalServer.id == UnattendedAccount.terminal_server_id)
        .where(UnattendedAccount.robot_id == Robot.id, TerminalServer.coordinator_id.is_not(None))
        .exists()
    )
    return sa.and_(
        Robot.role == RobotRole.UNATTENDED,
        Robot.status == RobotStatus.DISCONNECTED,
        has_server,
    )


ClaimedJob = Any
"""A row of ``dispatchable_jobs``: ``id``, ``account_id``, ``robot_id``, ``robot_group_id``,
``attempt``, what ``jobflow.transition`` reads of a locked job (``state``, ``process_id``,
``stop_after_s``, ``interrupt_after_s``), ``pending_since``, and the robot's ``robot_status``, ``robot_gateway_id``,
``robot_role``."""


def _robot_column(column: Any) -> Any:
    """The job's robot's ``column``, as a correlated scalar subquery (read, not locked)."""
    return sa.select(column).where(Robot.id == Job.robot_id).scalar_subquery()


def dispatchable_jobs(limit: int, exclude: set[uuid.UUID]) -> sa.Select[Any]:
    """Pending jobs that a robot could take now, best first, locked with SKIP LOCKED.

    The robot conditions sit in ``EXISTS`` subqueries so that only ``job`` rows are locked (MariaDB
    has no ``FOR UPDATE OF``) and so that jobs waiting for a busy robot never fill a batch. The
    robot's status, gateway and role come along (one round trip less on the hot path); the guarded
    claim re-checks them.
    """
    robot_free = (
        sa.select(sa.literal(1))
        .select_from(Robot)
        .where(
            Robot.id == Job.robot_id,
            _robot_can_take_work(),
            sa.or_(_robot_connected(), _session_capable()),
        )
        .exists()
    )
    group_has_free = (
        sa.select(sa.literal(1))
        .select_from(RobotGroupMember)
        .join(Robot, Robot.id == RobotGroupMember.robot_id)
        .where(RobotGroupMember.group_id == Job.robot_group_id, _robot_can_take_work(), _robot_connected())
        .exists()
    )
    # Columns, not the entity: the pass needs five of the job's fields, and loading ORM objects
    # is a good part of a pass's CPU.
    stmt = sa.select(
        Job.id,
        Job.account_id,
        Job.robot_id,
        Job.robot_group_id,
        Job.attempt,
        # What jobflow.transition reads of a locked job: the row is ours, no second read.
        Job.state,
        Job.process_id,
        Job.stop_after_s,
        Job.interrupt_after_s,
        _robot_column(Robot.status).label("robot_status"),
        _robot_column(Robot.gateway_id).label("robot_gateway_id"),
        _robot_column(Robot.role).label("robot_role"),
        # Every write to a job sets updated_at, and a Pending job is not written until it goes:
        # this is when it became Pending (rpa_dispatch_latency_seconds).
        Job.updated_at.label("pending_since"),
    ).where(
        Job.state == JobState.PENDING,
        sa.or_(
            sa.and_(Job.robot_id.is_not(None), robot_free),
            sa.and_(Job.robot_id.is_(None), Job.robot_group_id.is_not(None), group_has_free),
        ),
    )
    if exclude:
        stmt = stmt.where(Job.id.not_in(exclude))
    return (
        stmt.order_by(Job.priority.desc(), Job.created_at.asc(), Job.id.asc())
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


# Built once: constructing this statement costs more CPU than running it (it runs several times
# per job). The limit and the excluded ids are bound at execution.
_DISPATCHABLE = dispatchable_jobs(0, set()).limit(sa.bindparam("limit", type_=sa.Integer))
_DISPATCHABLE_EXCLUDING = _DISPATCHABLE.where(Job.id.not_in(sa.bindparam("exclude", expanding=True)))


async def _claim_robot(
    session: AsyncSession,
    robot_id: uuid.UUID,
    job_id: uuid.UUID,
    *guards: sa.ColumnElement[bool],
    connected: bool = False,
    locked: bool = False,
) -> bool:
    """The guarded claim: rowcount 1, or another job (on any replica) took the robot first, or the
    robot is no longer as it was seen (``guards``: still on that gateway, still disconnected...).

    The robot row is locked with SKIP LOCKED first: a dispatcher never waits for a robot row (held
    by another dispatcher, a heartbeat or a job report), so it takes no part in a lock cycle; a
    robot busy right now is simply tried again on the next pass.

    A connected robot is Working from here on: its gateway then offers the job without a status
    write of its own. ``locked``: the caller holds the robot's row lock already."""
    held = sa.select(Robot.account_id, Robot.status).where(
        Robot.id == robot_id, Robot.current_job_id.is_(None), Robot.is_active.is_(True), *guards
    )
    # Already locked by the caller: the read is a primary-key lookup under that lock.
    before = (await session.execute(held if locked else held.with_for_update(skip_locked=True))).one_or_none()
    if before is None:
        return False
    values: dict[str, Any] = {"current_job_id": job_id}
    if connected:
        values["status"] = RobotStatus.WORKING
    result = await session.execute(
        sa.update(Robot)
        .where(Robot.id == robot_id, Robot.current_job_id.is_(None), Robot.is_active.is_(True), *guards)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    if connected and before.status != RobotStatus.WORKING:
        await robot_history.status_changed(
            session, account_id=before.account_id, robot_id=robot_id, status=RobotStatus.WORKING, at=utcnow()
        )
    return True


async def _start(
    session: AsyncSession,
    settings: Settings,
    job: ClaimedJob,
    robot_id: uuid.UUID,
    lease_s: float,
    reason: str,
) -> Transition | None:
    now = utcnow()
    return await transition(
        session,
        job.id,
        JobState.STARTING,
        expected=[JobState.PENDING],
        actor=Actor.system(),
        reason=reason,
        locked=job,  # locked by the batch's SELECT ... FOR UPDATE, with the columns transition reads
        flush=False,  # the batch's history entries go in one insert
        values={
            "robot_id": robot_id,
            "attempt": job.attempt + 1,
            "lease_expires_at": now + timedelta(seconds=lease_s),
            # The confirmation clock: the sweep offers again when the robot stays silent.
            "offered_at": now,
            "offers": 1,
        },
    )


async def _assign_robot_job(
    session: AsyncSession, settings: Settings, job: ClaimedJob, robot: Any, out: BatchResult
) -> bool:
    """``robot``: the batch row's ``robot_status``, ``robot_gateway_id``, ``robot_role``."""
    assert job.robot_id is not None
    status, gateway_id, role = robot.robot_status, robot.robot_gateway_id, robot.robot_role
    if status in CONNECTED_STATUSES and gateway_id is not None:
        # Still on the gateway we tell: an offer sent to a gateway that lost the robot is lost.
        if not await _claim_robot(
            session,
            job.robot_id,
            job.id,
            Robot.gateway_id == gateway_id,
            Robot.status.in_(CONNECTED_STATUSES),
            connected=True,
        ):
            return False
        t = await _start(session, settings, job, job.robot_id, settings.job_lease_s, "robot chosen")
        if t is None:  # pragma: no cover - the job row is locked by this transaction
            raise RuntimeError(f"job {job.id} left Pending under our lock")
        out.started.append(t)
        out.outbox.add(
            subjects.gateway_inbox(gateway_id),
            GatewayCommand(robot_id=job.robot_id, kind="offer", job_id=job.id, attempt=t.attempt),
        )
        return True
    if role == RobotRole.UNATTENDED and status == RobotStatus.DISCONNECTED:
        return await _open_session_for(session, settings, job, job.robot_id, out)
    return False


async def _open_session_for(
    session: AsyncSession, settings: Settings, job: ClaimedJob, robot_id: uuid.UUID, out: BatchResult
) -> bool:
    row = (
        await session.execute(
            sa.select(UnattendedAccount, TerminalServer)
            .join(TerminalServer, TerminalServer.id == UnattendedAccount.terminal_server_id)
            .where(UnattendedAccount.robot_id == robot_id, TerminalServer.coordinator_id.is_not(None))
        )
    ).one_or_none()
    if row is None:
        return False
    ua, server = row
    # The server row is the seat counter's lock: replicas opening sessions on one server queue
    # here, so max_sessions holds; other servers are not held up.
    await session.execute(
        sa.select(TerminalServer.id).where(TerminalServer.id == server.id).with_for_update()
    )
    live = await session.scalar(
        sa.select(sa.func.count())
        .select_from(TerminalSession)
        .where(
            TerminalSession.terminal_server_id == server.id, TerminalSession.state.in_(LIVE_SESSION_STATES)
        )
    )
    if (live or 0) >= server.max_sessions:
        log.info("dispatch.server_full", job_id=str(job.id), terminal_server_id=str(server.id))
        return False
    if not server.public_key:
        # Without the coordinator's public key the password could only travel in clear: never.
        # Failing now (not waiting) tells a person what to fix.
        t = await transition(
            session,
            job.id,
            JobState.FAILED,
            expected=[JobState.PENDING],
            actor=Actor.system(),
            reason=NO_PUBLIC_KEY,
            values={"error": NO_PUBLIC_KEY},
            locked=job,
        )
        if t is not None:
            out.started.append(t)
        return True
    if not await _claim_robot(session, robot_id, job.id, Robot.status == RobotStatus.DISCONNECTED):
        return False
    lease_s = settings.session_connect_timeout_s + settings.job_lease_s
    t = await _start(session, settings, job, robot_id, lease_s, "opening a session")
    if t is None:  # pragma: no cover - the job row is locked by this transaction
        raise RuntimeError(f"job {job.id} left Pending under our lock")
    # Only the hash of a robot key is stored, so the robot's key for this session is minted here
    # (rotation per session): the previous key stops working, the new one reaches the robot
    # process through OpenSession -> coordinator -> the child's environment.
    key = make_key(ROBOT_KEY_KIND)
    await session.execute(
        sa.update(Robot)
        .where(Robot.id == robot_id)
        .values(key_prefix=key.prefix, key_hash=key.hash, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    ts = TerminalSession(
        id=uuid.uuid4(),
        account_id=job.account_id,
        unattended_account_id=ua.id,
        terminal_server_id=server.id,
        robot_id=robot_id,
        job_id=job.id,
        state=SessionState.REQUESTED,
    )
    ts.robot_key_encrypted = encrypt_session_key(settings, ts.id, key.full)
    session.add(ts)
    record_session_state(
        session,
        account_id=job.account_id,
        session_id=ts.id,
        robot_id=robot_id,
        terminal_server_id=server.id,
        job_id=job.id,
        state=SessionState.REQUESTED,
        reason=None,
        at=utcnow(),
    )
    await session.flush()
    out.started.append(t)
    assert server.coordinator_id is not None
    out.outbox.add(
        subjects.coordinator_inbox(server.coordinator_id),
        open_session_command(settings, ts, ua, server, key.full),
    )
    return True


def record_session_state(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    session_id: uuid.UUID,
    robot_id: uuid.UUID | None,
    terminal_server_id: uuid.UUID,
    job_id: uuid.UUID | None,
    state: SessionState,
    reason: str | None,
    at: datetime,
) -> None:
    """The ``session.state`` event of a terminal session's change, in the change's transaction.
    No folder: a session is the account's (``terminal_servers:read`` sees it)."""
    events.record(
        session,
        "session.state",
        account_id=account_id,
        object_id=session_id,
        at=at,
        data={
            "session_id": str(session_id),
            "robot_id": str(robot_id) if robot_id else None,
            "terminal_server_id": str(terminal_server_id),
            "job_id": str(job_id) if job_id else None,
            "state": state.value,
            "reason": reason[:1000] if reason else None,
        },
    )


def encrypt_session_key(settings: Settings, session_id: uuid.UUID, key: str) -> bytes:
    """The session's robot key at rest, bound to the session (a copy in another row does not decrypt)."""
    return Encryptor.from_settings(settings).encrypt(key, context=f"terminal_session:{session_id}")


def decrypt_session_key(settings: Settings, session_id: uuid.UUID, blob: bytes) -> str:
    return Encryptor.from_settings(settings).decrypt(blob, context=f"terminal_session:{session_id}")


def open_session_command(
    settings: Settings, ts: TerminalSession, ua: UnattendedAccount, server: TerminalServer, robot_key: str
) -> OpenSession:
    """The coordinator's command for a session (the same one when it is sent again).

    The password and the robot key are sealed to the coordinator's public key, bound to the
    session: the command on NATS carries neither in clear."""
    assert ts.robot_id is not None and server.public_key
    sealed = seal_json(
        server.public_key,
        {"password": unattended_password(settings, ua) or "", "robot_key": robot_key},
        session_seal_context(ts.id),
    )
    return OpenSession(
        session_id=ts.id,
        account_id=ts.account_id,
        unattended_account_id=ua.id,
        robot_id=ts.robot_id,
        job_id=ts.job_id,
        login=ua.login,
        domain=ua.domain,
        sealed=sealed,
        gateway_url=settings.gateway_public_url,
        server=RdpTarget(
            host=server.hostname or "127.0.0.1",
            port=server.rdp_port,
            cert_fingerprint=server.cert_fingerprint,
            cert_ignore=server.cert_ignore,
            shell_mode=server.shell_mode,
            shell_command=server.shell_command,
        ),
    )


async def _assign_group_job(
    session: AsyncSession, settings: Settings, job: ClaimedJob, out: BatchResult
) -> bool:
    assert job.robot_group_id is not None
    members = sa.select(RobotGroupMember.robot_id).where(RobotGroupMember.group_id == job.robot_group_id)
    candidate = (
        await session.execute(
            sa.select(Robot.id, Robot.gateway_id)
            .where(Robot.id.in_(members), _robot_can_take_work(), _robot_connected())
            .order_by(Robot.name)
            .limit(1)  # lock one robot only: concurrent dispatchers take the next one
            .with_for_update(skip_locked=True)
        )
    ).one_or_none()
    # The robot row is locked and was free under the lock; the guarded claim still decides.
    if candidate is None or not await _claim_robot(
        session, candidate.id, job.id, connected=True, locked=True
    ):
        return False
    t = await _start(session, settings, job, candidate.id, settings.job_lease_s, "robot of the group chosen")
    if t is None:  # pragma: no cover - the job row is locked by this transaction
        raise RuntimeError(f"job {job.id} left Pending under our lock")
    out.started.append(t)
    out.outbox.add(
        subjects.gateway_inbox(candidate.gateway_id),
        GatewayCommand(robot_id=candidate.id, kind="offer", job_id=job.id, attempt=t.attempt),
    )
    return True


async def dispatch_batch(
    ctx: ServiceContext, *, limit: int = BATCH_SIZE, exclude: set[uuid.UUID] | None = None
) -> BatchResult:
    """Claim up to ``limit`` dispatchable jobs and hand out what can be, in one transaction."""
    settings = ctx.settings

    async def work(session: AsyncSession) -> BatchResult:
        out = BatchResult()
        if exclude:
            stmt, params = _DISPATCHABLE_EXCLUDING, {"limit": limit, "exclude": list(exclude)}
        else:
            stmt, params = _DISPATCHABLE, {"limit": limit}
        rows = (await session.execute(stmt, params)).all()
        out.claimed = len(rows)
        await _handle(session, settings, rows, out)
        # The offers travel with the commands (one query for the batch): the gateway hands the job
        # to the robot without reading the database.
        offers = await offers_for(
            session,
            [m.job_id for _, m in out.outbox.items if isinstance(m, GatewayCommand) and m.job_id is not None],
        )
        out.outbox.items = [
            (subject, m.model_copy(update={"offer": offers.get(m.job_id)}))
            if isinstance(m, GatewayCommand) and m.job_id is not None
            else (subject, m)
            for subject, m in out.outbox.items
        ]
        return out

    result = await run_in_transaction(ctx.sessions, work, attempts=settings.db_retry_attempts)
    for t in result.started:
        result.outbox.add(subjects.JOB_STATE, t.message())
        for created in t.created:  # jobs its end started (job completion triggers)
            result.outbox.add(subjects.JOB_CREATED, created)
        since = result.pending_since.get(t.job_id)
        if since is not None:
            metrics.DISPATCH_LATENCY.observe(max(0.0, (t.at - since).total_seconds()))
    if result.started:
        metrics.JOBS_DISPATCHED.inc(len(result.started))
    await result.outbox.flush(ctx)
    return result


async def _handle(session: AsyncSession, settings: Settings, rows: Any, out: BatchResult) -> None:
    """Hand each claimed job to a robot, or leave it Pending (``out.skipped``)."""
    for job in rows:
        out.pending_since[job.id] = job.pending_since
        # No savepoint per job: every "no" below is decided before anything is written, and
        # the job row is ours (locked), so the Pending -> Starting guard cannot miss.
        if job.robot_id is not None:
            ok = await _assign_robot_job(session, settings, job, job, out)
        else:
            ok = await _assign_group_job(session, settings, job, out)
        if not ok:
            out.skipped.append(job.id)
            out.skipped_busy += 1


@dataclass
class PassResult:
    started: int = 0
    skipped_busy: int = 0
    """Jobs left Pending although a robot looked free: its row was locked by someone else
    (SKIP LOCKED), so one more pass after that commit may place them."""


async def dispatch_pass(ctx: ServiceContext, *, limit: int = BATCH_SIZE, max_batches: int = 64) -> PassResult:
    """Batches until nothing more can be handed out now."""
    out = PassResult()
    skipped: set[uuid.UUID] = set()
    for _ in range(max_batches):
        result = await dispatch_batch(ctx, limit=limit, exclude=skipped)
        out.started += len(result.started)
        out.skipped_busy += result.skipped_busy
        skipped.update(result.skipped)
        # A short batch saw every job that could go now; newer ones set the wake-up again.
        if result.claimed < limit:
            break
    if out.started:
        log.debug("dispatch.pass", started=out.started)
    return out
