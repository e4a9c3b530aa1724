"""``GET /jobs/{id}/explain``: why a job is still Pending, read with the dispatcher's rules.

The scheduler's dispatcher (``rpa_scheduler.dispatch``) hands a Pending job to its robot when the
robot is active, holds no job and is connected (Ready/Working on a gateway), or, for an unattended
robot that is not connected, when its account's terminal server has a coordinator and a free session
seat; a group's job goes to the first connected free member. This module reads the same rows with
the same rules (``rpa_common.dispatch_rules``) and says which one holds the job back. Nothing is
locked or written: the answer is a snapshot, and the dispatcher may act a moment later.

Every reason has a stable ``code`` (docs/api-guide.md lists them); when nothing blocks, the job is
``queued`` behind the Pending jobs that go first for the same robots, or ``dispatching``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.jobs.schemas import ExplainReason, JobExplain, RobotStateOut
from rpa_common.dispatch_rules import CONNECTED_STATUSES, LIVE_SESSION_STATES
from rpa_common.license_seats import seats_for
from rpa_common.models import (
    Job,
    Robot,
    RobotGroup,
    RobotGroupMember,
    TerminalServer,
    TerminalSession,
    UnattendedAccount,
)
from rpa_common.models.base import utcnow
from rpa_common.models.enums import JobState, RobotRole, RobotStatus
from rpa_common.settings import Settings

R = ExplainReason

Seen = Callable[[Any], sa.ColumnElement[bool]]
"""The caller's folder filter (``Principal.folder_clause``): names of robots and groups in folders the
caller cannot see are not shown (their ids are, as in the job itself)."""

HIDDEN = "(in a folder you cannot see)"


def _named(model: Any, seen: Seen) -> Any:
    return sa.case((seen(model.folder_id), model.name), else_=sa.literal(HIDDEN)).label("name")


_WAITING = (JobState.PENDING, JobState.STARTING)


def _connected(robot: Any) -> bool:
    return robot.status in CONNECTED_STATUSES and robot.gateway_id is not None


def _free(robot: Any) -> bool:
    return bool(robot.is_active) and robot.current_job_id is None


async def explain(session: AsyncSession, settings: Settings, job: Job, seen: Seen) -> JobExplain:
    if job.state == JobState.PENDING:
        reasons = await _pending(session, settings, job, seen)
    else:
        reasons = [await _not_pending(session, job, seen)]
    return JobExplain(job_id=job.id, state=job.state, waiting=job.state in _WAITING, reasons=reasons)


# Jobs that are not Pending: their state in words ----------------------------------------------------


async def _robot_name(session: AsyncSession, robot_id: uuid.UUID | None, seen: Seen) -> str:
    if robot_id is None:
        return "(deleted robot)"
    name = await session.scalar(sa.select(_named(Robot, seen)).where(Robot.id == robot_id))
    return name or "(deleted robot)"


async def _not_pending(session: AsyncSession, job: Job, seen: Seen) -> ExplainReason:
    name = await _robot_name(session, job.robot_id, seen)
    if job.state == JobState.STARTING:
        live = (
            await session.execute(
                sa.select(TerminalSession.id, TerminalSession.state, TerminalSession.terminal_server_id)
                .where(TerminalSession.job_id == job.id, TerminalSession.state.in_(LIVE_SESSION_STATES))
                .order_by(TerminalSession.created_at.desc())
                .limit(1)
            )
        ).one_or_none()
        if live is not None:
            return R(
                code="starting",
                message=f"starting: a session is being opened for robot {name!r} "
                f"(session {live.state.value}); the job runs once the robot connects",
                robot_id=job.robot_id,
                robot_name=name,
                session_id=live.id,
                session_state=live.state.value,
                terminal_server_id=live.terminal_server_id,
                since=job.offered_at,
            )
        return R(
            code="starting",
            message=f"starting: offered to robot {name!r}, waiting for it to confirm",
            robot_id=job.robot_id,
            robot_name=name,
            since=job.offered_at,
        )
    if job.state == JobState.RUNNING:
        since = job.started_at
        return R(
            code="running",
            message=f"running on robot {name!r}" + (f" since {since.isoformat()}" if since else ""),
            robot_id=job.robot_id,
            robot_name=name,
            since=since,
        )
    if job.state in (JobState.STOPPING, JobState.INTERRUPTING):
        what = "stop" if job.state == JobState.STOPPING else "interrupt"
        return R(
            code=job.state.value.lower(),
            message=f"{job.state.value.lower()}: robot {name!r} was asked to {what} the job",
            robot_id=job.robot_id,
            robot_name=name,
            since=job.updated_at,
        )
    ended = job.ended_at or job.updated_at
    return R(
        code="ended",
        message=f"ended {job.state.value} at {ended.isoformat()}" + (f": {job.error}" if job.error else ""),
        robot_id=job.robot_id,
        since=ended,
    )


# Pending jobs: what the dispatcher waits for -------------------------------------------------------


def _robot_columns(seen: Seen) -> tuple[Any, ...]:
    return (
        Robot.id,
        _named(Robot, seen),
        Robot.role,
        Robot.status,
        Robot.status_reason,
        Robot.is_active,
        Robot.current_job_id,
        Robot.gateway_id,
        Robot.account_id,
    )


async def _pending(session: AsyncSession, settings: Settings, job: Job, seen: Seen) -> list[ExplainReason]:
    if job.robot_id is not None:
        robot = (
            await session.execute(sa.select(*_robot_columns(seen)).where(Robot.id == job.robot_id))
        ).one_or_none()
        blocked = await _robot_blocks(session, settings, robot) if robot is not None else []
    elif job.robot_group_id is not None:
        blocked = await _group_blocks(session, job.robot_group_id, seen)
    else:
        blocked = [
            R(code="target_deleted", message="its robot or robot group was deleted: no robot can take it")
        ]
    if blocked:
        return blocked
    ahead = await _jobs_ahead(session, job)
    if ahead:
        return [
            R(
                code="queued",
                message=f"queued behind {ahead} earlier Pending job{'s' if ahead != 1 else ''} "
                "for the same robots (higher priority or older)",
                jobs_ahead=ahead,
                robot_id=job.robot_id,
                robot_group_id=job.robot_group_id,
            )
        ]
    return [
        R(
            code="dispatching",
            message="nothing holds it back: the dispatcher hands it to a robot on its next pass",
            jobs_ahead=0,
            robot_id=job.robot_id,
            robot_group_id=job.robot_group_id,
        )
    ]


async def _robot_blocks(session: AsyncSession, settings: Settings, robot: Any) -> list[ExplainReason]:
    """Why the dispatcher does not hand a job to this robot now (empty: it would)."""
    out: list[ExplainReason] = []
    who = {"robot_id": robot.id, "robot_name": robot.name, "robot_status": robot.status.value}
    if not robot.is_active:
        out.append(R(code="robot_inactive", message=f"robot {robot.name!r} is inactive", **who))
    if robot.current_job_id is not None:
        out.append(
            R(
                code="robot_busy",
                message=f"robot {robot.name!r} is busy with job {robot.current_job_id}",
                busy_with_job_id=robot.current_job_id,
                **who,
            )
        )
    if robot.status == RobotStatus.UNLICENSED:
        seats = await seats_for(
            session,
            account_id=robot.account_id,
            robot_id=robot.id,
            role=robot.role,
            now=utcnow(),
            lock=False,
        )
        why = robot.status_reason or (seats.refusal if seats else None) or "no license seat"
        out.append(
            R(
                code="robot_unlicensed",
                message=f"robot {robot.name!r} is Unlicensed: {why}",
                status_reason=robot.status_reason,
                license_kinds=seats.kinds if seats else None,
                license_capacity=seats.capacity if seats else None,
                license_in_use=seats.in_use if seats else None,
                **who,
            )
        )
    elif _connected(robot):
        pass
    elif robot.role == RobotRole.UNATTENDED and robot.status == RobotStatus.DISCONNECTED:
        out.extend(await _session_blocks(session, settings, robot, who))
    else:
        out.append(
            R(
                code="robot_disconnected",
                message=f"robot {robot.name!r} is not connected ({robot.status.value}): "
                "the job starts when it connects",
                **who,
            )
        )
    return out


async def _session_blocks(
    session: AsyncSession, settings: Settings, robot: Any, who: dict[str, Any]
) -> list[ExplainReason]:
    """An unattended robot that is not connected: the dispatcher asks the coordinator of its
    account's terminal server to open a session, if that server has a coordinator and a free seat."""
    row = (
        await session.execute(
            sa.select(
                TerminalServer.id,
                TerminalServer.name,
                TerminalServer.coordinator_id,
                TerminalServer.max_sessions,
                TerminalServer.public_key,
            )
            .join(UnattendedAccount, UnattendedAccount.terminal_server_id == TerminalServer.id)
            .where(UnattendedAccount.robot_id == robot.id)
        )
    ).one_or_none()
    if row is None:
        return [
            R(
                code="robot_disconnected",
                message=f"robot {robot.name!r} is not connected and has no unattended account on a "
                "terminal server to open a session with: the job starts when it connects",
                **who,
            )
        ]
    server = {"terminal_server_id": row.id}
    if row.coordinator_id is None:
        return [
            R(
                code="no_coordinator",
                message=f"robot {robot.name!r} is not connected and terminal server {row.name!r} has "
                "no coordinator to open a session",
                **who,
                **server,
            )
        ]
    out: list[ExplainReason] = []
    coordinator = (
        await session.execute(
            sa.select(Robot.name, Robot.status, Robot.gateway_id).where(Robot.id == row.coordinator_id)
        )
    ).one_or_none()
    if coordinator is None or not _connected(coordinator):
        status = coordinator.status.value if coordinator is not None else "deleted"
        out.append(
            R(
                code="coordinator_disconnected",
                message=f"the coordinator of terminal server {row.name!r} is unreachable ({status}): "
                "no session can be opened for robot "
                f"{robot.name!r} until it reconnects",
                coordinator_id=row.coordinator_id,
                **who,
                **server,
            )
        )
    live = int(
        await session.scalar(
            sa.select(sa.func.count())
            .select_from(TerminalSession)
            .where(
                TerminalSession.terminal_server_id == row.id,
                TerminalSession.state.in_(LIVE_SESSION_STATES),
            )
        )
        or 0
    )
    if live >= row.max_sessions:
        out.append(
            R(
                code="session_limit_reached",
                message=f"terminal server {row.name!r} has reached its session limit "
                f"({live} of {row.max_sessions} sessions open)",
                live_sessions=live,
                max_sessions=row.max_sessions,
                coordinator_id=row.coordinator_id,
                **who,
                **server,
            )
        )
    if not row.public_key:
        out.append(
            R(
                code="coordinator_key_missing",
                message=f"terminal server {row.name!r} has no coordinator public key: the dispatcher "
                "fails the job rather than send a password in clear (start its coordinator)",
                coordinator_id=row.coordinator_id,
                **who,
                **server,
            )
        )
    if settings.license_required:
        seats = await seats_for(
            session, account_id=robot.account_id, robot_id=robot.id, role=robot.role, now=utcnow(), lock=False
        )
        if seats is not None and seats.refusal is not None:
            # The session would open, but the robot would connect Unlicensed.
            out.append(
                R(
                    code="no_license_seat",
                    message=f"robot {robot.name!r} would connect Unlicensed: {seats.refusal}",
                    license_kinds=seats.kinds,
                    license_capacity=seats.capacity,
                    license_in_use=seats.in_use,
                    **who,
                )
            )
    return out


async def _group_blocks(session: AsyncSession, group_id: uuid.UUID, seen: Seen) -> list[ExplainReason]:
    """A group's job goes to a member that is active, free and connected (never through a session)."""
    name = await session.scalar(sa.select(_named(RobotGroup, seen)).where(RobotGroup.id == group_id))
    members = (
        await session.execute(
            sa.select(*_robot_columns(seen))
            .join(RobotGroupMember, RobotGroupMember.robot_id == Robot.id)
            .where(RobotGroupMember.group_id == group_id)
            .order_by(Robot.name)
        )
    ).all()
    if any(_free(m) and _connected(m) for m in members):
        return []
    if not members:
        return [
            R(
                code="group_empty",
                message=f"robot group {name!r} has no robots",
                robot_group_id=group_id,
            )
        ]
    robots = [
        RobotStateOut(
            robot_id=m.id,
            name=m.name,
            status=m.status.value,
            is_active=m.is_active,
            busy_with_job_id=m.current_job_id,
            status_reason=m.status_reason,
        )
        for m in members
    ]
    return [
        R(
            code="no_robot_ready",
            message=f"no robot of group {name!r} is Ready: " + "; ".join(_member_words(m) for m in members),
            robot_group_id=group_id,
            robots=robots,
        )
    ]


def _member_words(m: Any) -> str:
    if not m.is_active:
        return f"{m.name} inactive"
    if m.current_job_id is not None:
        return f"{m.name} busy with job {m.current_job_id}"
    if m.status == RobotStatus.UNLICENSED:
        return f"{m.name} Unlicensed" + (f" ({m.status_reason})" if m.status_reason else "")
    return f"{m.name} {m.status.value}"


async def _jobs_ahead(session: AsyncSession, job: Job) -> int:
    """Pending jobs of the account that the dispatcher takes first (``priority DESC, created_at,
    id``) and that want the same robots: the same robot or group, a group holding the robot, or a
    member of the group."""
    if job.robot_id is not None:
        groups = sa.select(RobotGroupMember.group_id).where(RobotGroupMember.robot_id == job.robot_id)
        same = sa.or_(Job.robot_id == job.robot_id, Job.robot_group_id.in_(groups))
    else:
        members = sa.select(RobotGroupMember.robot_id).where(RobotGroupMember.group_id == job.robot_group_id)
        same = sa.or_(Job.robot_group_id == job.robot_group_id, Job.robot_id.in_(members))
    first = sa.or_(
        Job.priority > job.priority,
        sa.and_(
            Job.priority == job.priority,
            sa.or_(
                Job.created_at < job.created_at,
                sa.and_(Job.created_at == job.created_at, Job.id < job.id),
            ),
        ),
    )
    count = await session.scalar(
        sa.select(sa.func.count())
        .select_from(Job)
        .where(Job.account_id == job.account_id, Job.state == JobState.PENDING, Job.id != job.id, same, first)
    )
    return int(count or 0)
