"""``session.state`` events: the scheduler records each stored change of a terminal session in its
transaction, and ``GET /api/v1/events`` delivers them to the account (issue 13)."""

from __future__ import annotations

import uuid

import httpx
import sqlalchemy as sa

from rpa_common.models import EventOutbox, TerminalSession
from rpa_common.models.base import utcnow
from rpa_common.models.enums import RobotRole, RobotStatus, SessionState
from rpa_common.nats.messages import SessionStateReport
from rpa_scheduler.dispatch import dispatch_pass
from rpa_scheduler.sweeps import apply_session_report
from tests.api.factories import make_process
from tests.events.test_stream import Stack, _emit, _read, _tenant, stack  # noqa: F401
from tests.scheduler.factory import World


async def test_a_session_report_becomes_a_session_state_event(stack: Stack) -> None:  # noqa: F811
    ctx = stack.ctx
    tenant = await _tenant(stack)
    process, versions = await make_process(ctx, tenant.account_id)
    world = World(ctx, tenant.account_id, process.id, versions[0].id)
    coordinator = await world.robot(role=RobotRole.COORDINATOR)
    server = await world.terminal_server(coordinator)
    bot = await world.robot(role=RobotRole.UNATTENDED, status=RobotStatus.DISCONNECTED)
    await world.unattended_account(server, bot, f"svc_{bot.hex[:6]}", "pw")
    job_id = await world.job(robot_id=bot)
    start = (await ctx.nc.jetstream().stream_info("RPA_EVENTS")).state.last_seq

    await dispatch_pass(ctx)  # opens a session: requested
    async with ctx.sessions() as session:
        session_id = await session.scalar(
            sa.select(TerminalSession.id).where(TerminalSession.job_id == job_id)
        )
    assert session_id is not None

    def report(state: SessionState, reason: str | None = None) -> SessionStateReport:
        return SessionStateReport(
            session_id=session_id, account_id=tenant.account_id, state=state, reason=reason, at=utcnow()
        )

    assert await apply_session_report(ctx, report(SessionState.LOGGED_ON))
    # A late or repeated report changes nothing, and makes no event.
    assert not await apply_session_report(ctx, report(SessionState.CONNECTING))
    assert not await apply_session_report(ctx, report(SessionState.LOGGED_ON))
    assert await apply_session_report(ctx, report(SessionState.FAILED, "logon refused"))
    async with ctx.sessions() as session:
        kinds = (
            await session.scalars(
                sa.select(EventOutbox.data)
                .where(EventOutbox.account_id == tenant.account_id, EventOutbox.type == "session.state")
                .order_by(EventOutbox.id)
            )
        ).all()
    assert [k["state"] for k in kinds] == ["requested", "logged_on", "failed"]
    await _emit(stack, tenant.account_id, 0)  # relays what the outbox holds

    async with httpx.AsyncClient(base_url=stack.base, timeout=10) as client:
        seen = await _read(
            client, f"/api/v1/events?last_event_id={start}&types=session.state", 3, tenant.headers
        )
    assert [m["event"] for m in seen] == ["session.state"] * 3
    events = [m["data"] for m in seen]
    assert {e["object_id"] for e in events} == {str(session_id)}
    assert {e["account_id"] for e in events} == {str(tenant.account_id)}
    assert [e["data"]["state"] for e in events] == ["requested", "logged_on", "failed"]
    last = events[-1]["data"]
    assert last == {
        "session_id": str(session_id),
        "robot_id": str(bot),
        "terminal_server_id": str(server),
        "job_id": str(job_id),
        "state": "failed",
        "reason": "logon refused",
    }
    assert uuid.UUID(last["session_id"]) == session_id
