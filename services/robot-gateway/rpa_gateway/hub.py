"""The gateway replica: robot connections, their frames, and the NATS commands that reach them.

One ``Hub`` per process, with its own ``gateway_id``. It holds one ``Connection`` per connected
robot (a second connection of the same robot replaces the first), applies robot frames in order,
one transaction each, and relays orchestrator commands (offer, stop, interrupt, disconnect) that
arrive on its inbox or on the fan-out subjects for robots it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from rpa_common.db.uow import run_in_transaction
from rpa_common.jobflow import Transition
from rpa_common.models import Robot
from rpa_common.models.base import utcnow
from rpa_common.models.enums import JobState, RobotStatus
from rpa_common.nats import subjects
from rpa_common.nats.messages import (
    GatewayCommand,
    JobControl,
    JobOffer,
    JobStateChanged,
    Message,
    RobotChanged,
    RobotStatusChanged,
)
from rpa_common.service import ServiceContext
from rpa_gateway import store
from rpa_gateway.protocol import (
    CLOSE_FORBIDDEN,
    CLOSE_POLICY,
    CLOSE_REPLACED,
    CLOSE_RESTART,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNSUPPORTED,
    PROTOCOL_VERSION,
    SUPPORTED_PROTOCOLS,
    BadFrame,
    Heartbeat,
    Hello,
    JobRequest,
    JobStatus,
    LogBatch,
    command_id,
    encode,
    parse_frame,
)

log = structlog.get_logger(__name__)

HELLO_TIMEOUT_S = 10.0
CAPABILITY_JOBS = "jobs"
"""A connection whose hello lists it is the robot's main connection: it takes jobs."""
BAD_FRAME_LIMIT = 5
"""More bad frames than this within ``BAD_FRAME_WINDOW_S`` close the connection (1008)."""
BAD_FRAME_WINDOW_S = 60.0


class Connection:
    """One robot's live WebSocket. Small on purpose: a replica holds thousands."""

    __slots__ = (
        "_send_lock",
        "active_jobs",
        "bad",
        "closing",
        "connection_id",
        "finished",
        "logged_off",
        "robot",
        "single_job",
        "ws",
    )

    def __init__(self, ws: WebSocket, robot: store.RobotIdentity) -> None:
        self.ws = ws
        self.robot = robot
        self.connection_id = uuid.uuid4()
        self.active_jobs: dict[uuid.UUID, int] = {}  # job id -> attempt the robot was given
        # Jobs this gateway ended on the robot's report (and already refreshed the status for):
        # their JOB_STATE echo needs no second status refresh.
        self.finished: set[uuid.UUID] = set()
        self.bad: deque[float] = deque()
        self.closing = False
        # A robot started for one job (``exit_after_job``) is Disconnected as soon as that job ends,
        # so no other job is dispatched to it while it is leaving.
        self.single_job = False
        self.logged_off = False
        self._send_lock = asyncio.Lock()

    async def send(self, frame: dict[str, Any]) -> bool:
        """Send one frame; False when the connection is already gone.

        In gateway frames ``seq`` always names a robot frame: the one acknowledged or answered
        (ack, error, job.requested), or 0 (welcome and commands, which carry an ``id`` instead).
        """
        frame.setdefault("seq", 0)
        async with self._send_lock:
            if self.closing or self.ws.application_state != WebSocketState.CONNECTED:
                return False
            try:
                await self.ws.send_text(encode(frame))
                return True
            except Exception:  # the peer went away between the check and the send
                return False

    async def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason)


def _job_start_frame(offer: JobOffer) -> dict[str, Any]:
    return {
        "type": "job.start",
        "id": command_id(offer.job_id, offer.attempt, "start"),
        "job_id": offer.job_id,
        "attempt": offer.attempt,
        "state": offer.state.value,
        "process_id": offer.process_id,
        "process_name": offer.process_name,
        "version_id": offer.version_id,
        "version": offer.version,
        "sha256": offer.sha256,
        "size": offer.size,
        "entry_point": offer.entry_point,
        "input_args": offer.input_args,
        "package_url": f"/robot/v1/packages/{offer.version_id}",
    }


def _control_frame(kind: str, job_id: uuid.UUID, attempt: int, reason: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": f"job.{kind}",
        "id": command_id(job_id, attempt, kind),
        "job_id": job_id,
        "attempt": attempt,
    }
    if reason:
        frame["reason"] = reason
    return frame


class Hub:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.gateway_id = uuid.uuid4().hex
        self.connections: dict[uuid.UUID, Connection] = {}
        self._heard: set[uuid.UUID] = set()
        self._subs: list[Subscription] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False

    # Lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        nc = self.ctx.nc
        self._subs = [
            await nc.subscribe(subjects.gateway_inbox(self.gateway_id), cb=self._guard(self._on_command)),
            await nc.subscribe(subjects.JOB_CONTROL, cb=self._guard(self._on_job_control)),
            await nc.subscribe(subjects.ROBOT_CHANGED, cb=self._guard(self._on_robot_changed)),
            await nc.subscribe(subjects.JOB_STATE, cb=self._guard(self._on_job_state)),
        ]
        self._running = True
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="gateway-heartbeats"))
        log.info("gateway.started", gateway_id=self.gateway_id)

    async def stop(self) -> None:
        self._running = False
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for conn in list(self.connections.values()):
            await conn.close(CLOSE_RESTART, "gateway restarting")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._flush_heartbeats()

        # Whatever this replica still holds is Disconnected now (a newer connection elsewhere wins).
        async def work(session: AsyncSession) -> list[tuple[uuid.UUID, uuid.UUID]]:
            rows = (
                await session.execute(
                    sa.select(Robot.id, Robot.account_id).where(Robot.gateway_id == self.gateway_id)
                )
            ).all()
            await session.execute(
                sa.update(Robot)
                .where(Robot.gateway_id == self.gateway_id)
                .values(status=RobotStatus.DISCONNECTED, gateway_id=None, updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            return [(r.id, r.account_id) for r in rows]

        try:
            released = await run_in_transaction(self.ctx.sessions, work)
        except Exception as exc:
            log.warning("gateway.release_failed", error=str(exc))
            return
        for robot_id, account_id in released:
            await self._publish(
                subjects.ROBOT_STATUS,
                RobotStatusChanged(
                    account_id=account_id, robot_id=robot_id, status=RobotStatus.DISCONNECTED, at=utcnow()
                ),
            )

    async def _publish(self, subject: str, msg: Message) -> None:
        await self.ctx.publish(subject, msg.encode())

    # One connection ------------------------------------------------------------------------------

    async def serve(self, ws: WebSocket, robot: store.RobotIdentity) -> None:
        """Run one accepted connection to its end."""
        conn = Connection(ws, robot)
        hello = await self._receive_hello(conn)
        if hello is None:
            return
        if CAPABILITY_JOBS not in hello.capabilities:
            await self._serve_control(conn)
            return
        conn.single_job = hello.exit_after_job
        previous = self.connections.get(robot.id)
        self.connections[robot.id] = conn
        if previous is not None:
            await previous.close(CLOSE_REPLACED, "another connection of this robot took over")
        try:
            try:
                attached = await self._attach(conn, hello)
            except Exception as exc:
                log.exception("robot.attach_failed", robot_id=str(robot.id))
                await conn.close(CLOSE_RESTART, f"could not register the connection: {type(exc).__name__}")
                return
            if not attached:
                return
            await self._receive_loop(conn, control=False)
        finally:
            if self.connections.get(robot.id) is conn:
                del self.connections[robot.id]
            self._heard.discard(robot.id)
            await self._detach(conn)

    async def _serve_control(self, conn: Connection) -> None:
        """A connection that takes no jobs (e.g. ``rpa-robot start-process``): it only sends requests.

        It neither replaces the robot's main connection nor changes the robot's status.
        """
        await conn.send(
            {
                "type": "welcome",
                "protocol": PROTOCOL_VERSION,
                "robot_id": conn.robot.id,
                "robot_name": conn.robot.name,
                "connection_id": conn.connection_id,
                "heartbeat_interval_s": self.ctx.settings.heartbeat_interval_s,
                "resume": None,
                "server_time": utcnow(),
            }
        )
        await self._receive_loop(conn, control=True)

    async def _receive_hello(self, conn: Connection) -> Hello | None:
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                message = await conn.ws.receive()
        except TimeoutError:
            await conn.close(CLOSE_POLICY, "hello expected")
            return None
        if message["type"] == "websocket.disconnect":
            return None
        try:
            frame = parse_frame(
                message.get("text") if message.get("text") is not None else message.get("bytes")
            )
            if not isinstance(frame, Hello):
                raise BadFrame("the first frame must be 'hello'", field="type")
        except BadFrame as exc:
            await self._send_error(conn, exc)
            await conn.close(CLOSE_POLICY, "hello expected")
            return None
        if frame.protocol not in SUPPORTED_PROTOCOLS:
            await self._send_error(
                conn,
                BadFrame(
                    f"protocol {frame.protocol} is not supported; supported: {sorted(SUPPORTED_PROTOCOLS)}",
                    field="protocol",
                ),
            )
            await conn.close(CLOSE_UNSUPPORTED, "unsupported protocol version")
            return None
        return frame

    async def _attach(self, conn: Connection, hello: Hello) -> bool:
        robot = conn.robot
        attached = await run_in_transaction(
            self.ctx.sessions,
            lambda s: store.attach(
                s, robot.id, gateway_id=self.gateway_id, connection_id=conn.connection_id, hello=hello
            ),
        )
        if attached is None:
            await conn.close(CLOSE_UNAUTHORIZED, "robot no longer exists")
            return False
        if not attached.is_active:
            await conn.close(CLOSE_FORBIDDEN, "robot is inactive")
            return False
        if attached.previous_gateway_id not in (None, self.gateway_id):
            # The previous connection lives on another replica: tell it to let go.
            await self._publish(
                subjects.gateway_inbox(attached.previous_gateway_id),
                GatewayCommand(robot_id=robot.id, kind="disconnect"),
            )
        log.info(
            "robot.connected",
            robot_id=str(robot.id),
            connection_id=str(conn.connection_id),
            robot_version=hello.robot_version,
            attended=hello.attended,
        )
        await conn.send(
            {
                "type": "welcome",
                "protocol": PROTOCOL_VERSION,
                "robot_id": robot.id,
                "robot_name": robot.name,
                "connection_id": conn.connection_id,
                "heartbeat_interval_s": self.ctx.settings.heartbeat_interval_s,
                "resume": {"last_seq": attached.inbound_seq},
                "server_time": utcnow(),
            }
        )
        for offer in attached.offers:
            await self._offer(conn, offer)
        await self._publish(subjects.ROBOT_STATUS, store.status_message(robot, attached.status))
        return True

    async def _detach(self, conn: Connection) -> None:
        try:
            detached = await run_in_transaction(
                self.ctx.sessions, lambda s: store.detach(s, conn.robot.id, conn.connection_id)
            )
        except Exception as exc:  # the sweep will find the silent robot anyway
            log.warning("robot.detach_failed", robot_id=str(conn.robot.id), error=str(exc))
            return
        log.info("robot.disconnected", robot_id=str(conn.robot.id), connection_id=str(conn.connection_id))
        if detached:
            await self._publish(
                subjects.ROBOT_STATUS, store.status_message(conn.robot, RobotStatus.DISCONNECTED)
            )

    async def _offer(self, conn: Connection, offer: JobOffer) -> None:
        conn.active_jobs[offer.job_id] = offer.attempt
        await conn.send(_job_start_frame(offer))
        # A job already asked to stop while the robot was away hears it again after the start.
        if offer.state == JobState.STOPPING:
            await conn.send(_control_frame("stop", offer.job_id, offer.attempt))
        elif offer.state == JobState.INTERRUPTING:
            await conn.send(_control_frame("interrupt", offer.job_id, offer.attempt))

    async def _receive_loop(self, conn: Connection, *, control: bool) -> None:
        while True:
            try:
                message = await conn.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text") if message.get("text") is not None else message.get("bytes")
            try:
                frame = parse_frame(raw)
                if isinstance(frame, Hello):
                    raise BadFrame("'hello' was already received on this connection", field="type")
                if control and not isinstance(frame, JobRequest | Heartbeat):
                    raise BadFrame(
                        f"'{frame.type}' needs the 'jobs' capability (this is a control connection)",
                        field="type",
                        ref_seq=frame.seq,
                    )
            except BadFrame as exc:
                await self._send_error(conn, exc)
                if self._too_many_bad(conn):
                    await conn.close(CLOSE_POLICY, "too many bad frames")
                    return
                continue
            if isinstance(frame, Heartbeat):
                if not control and not conn.logged_off:
                    self._heard.add(conn.robot.id)
                continue
            await self._apply(conn, frame, control=control)

    def _too_many_bad(self, conn: Connection) -> bool:
        now = time.monotonic()
        conn.bad.append(now)
        while conn.bad and conn.bad[0] < now - BAD_FRAME_WINDOW_S:
            conn.bad.popleft()
        return len(conn.bad) > BAD_FRAME_LIMIT

    async def _send_error(self, conn: Connection, exc: BadFrame, code: str = "bad_frame") -> None:
        frame: dict[str, Any] = {"type": "error", "code": code, "detail": exc.detail}
        if exc.field:
            frame["field"] = exc.field
        frame["seq"] = exc.ref_seq if exc.ref_seq is not None else 0
        await conn.send(frame)

    async def _apply(
        self, conn: Connection, frame: JobStatus | LogBatch | JobRequest, *, control: bool = False
    ) -> None:
        """Apply a reliable frame once (``seq`` above ``inbound_seq``), commit, then ack and publish.

        Control connections have no sequence of their own: their requests are deduplicated by
        ``request_id`` alone.
        """
        robot = conn.robot
        lease_s = self.ctx.settings.job_lease_s

        async def work(session: AsyncSession) -> tuple[list[Transition], RobotStatus | None, Any]:
            job = await store.lock_job(session, frame.job_id) if isinstance(frame, JobStatus) else None
            fresh = True if control else await store.claim_seq(session, robot.id, frame.seq)
            transitions: list[Transition] = []
            status: RobotStatus | None = None
            extra: Any = None
            if isinstance(frame, JobRequest):
                if fresh:
                    extra = await store.create_requested_job(session, robot, frame)
                else:
                    existing = await store.existing_request(session, robot, frame)
                    extra = (existing, None if existing else "request already handled", None)
            elif not fresh:
                pass
            elif isinstance(frame, LogBatch):
                await store.insert_logs(session, robot, frame.entries)
            else:
                transitions = await store.apply_job_status(session, robot, frame, lease_s, job)
                ended = any(t.to_state.is_final for t in transitions)
                if ended and conn.single_job:
                    if await store.detach(session, robot.id, conn.connection_id):
                        status = RobotStatus.DISCONNECTED
                elif ended:
                    # Only an end changes Working/Ready: the dispatcher set Working when it
                    # assigned the job, and Starting -> Running leaves it so.
                    status = await store.refresh_status(session, robot.id, conn.connection_id)
            return transitions, status, extra

        try:
            transitions, status, extra = await run_in_transaction(self.ctx.sessions, work)
        except Exception as exc:
            # Not acked: the robot keeps the frame and sends it again after reconnecting.
            log.exception("frame.apply_failed", robot_id=str(robot.id), seq=frame.seq, type=frame.type)
            await conn.close(CLOSE_RESTART, f"could not store frame: {type(exc).__name__}")
            return
        for t in transitions:
            if t.to_state.is_final or t.to_state == JobState.PENDING:
                conn.active_jobs.pop(t.job_id, None)
                if len(conn.finished) > 256:  # echoes lost on the way: forget them
                    conn.finished.clear()
                conn.finished.add(t.job_id)
        if status == RobotStatus.DISCONNECTED:
            conn.logged_off = True
        await conn.send({"type": "ack", "seq": frame.seq})
        if isinstance(frame, JobRequest):
            job_id, error, created = extra
            reply: dict[str, Any] = {
                "type": "job.requested",
                "seq": frame.seq,
                "request_id": frame.request_id,
                "job_id": job_id,
            }
            if error:
                reply["error"] = error
            await conn.send(reply)
            if created is not None:
                await self._publish(subjects.JOB_CREATED, created)
        for t in transitions:
            await self._publish(subjects.JOB_STATE, t.message())
        if status is not None:
            await self._publish(subjects.ROBOT_STATUS, store.status_message(robot, status))

    # Heartbeats ----------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        # At most one write per robot per period, whatever the robots' heartbeat rate.
        period = max(0.2, min(1.0, self.ctx.settings.heartbeat_interval_s))
        while self._running:
            await asyncio.sleep(period)
            try:
                await self._flush_heartbeats()
            except Exception as exc:
                log.warning("heartbeat.flush_failed", error=str(exc))

    async def _flush_heartbeats(self) -> None:
        if not self._heard:
            return
        heard, self._heard = list(self._heard), set()
        lost = await run_in_transaction(
            self.ctx.sessions,
            lambda s: store.heartbeat(s, self.gateway_id, heard, self.ctx.settings.job_lease_s),
        )
        for robot_id in lost:
            conn = self.connections.get(robot_id)
            if conn is None or conn.logged_off:
                continue
            status = await run_in_transaction(
                self.ctx.sessions,
                lambda s, c=conn: store.reattach(s, c.robot.id, self.gateway_id, c.connection_id),  # type: ignore[misc]
            )
            if status is None:
                await conn.close(CLOSE_REPLACED, "another connection of this robot took over")
            else:
                await self._publish(subjects.ROBOT_STATUS, store.status_message(conn.robot, status))

    # NATS handlers -------------------------------------------------------------------------------

    def _guard(self, handler: Callable[[Msg], Awaitable[None]]) -> Callable[[Msg], Awaitable[None]]:
        async def run(msg: Msg) -> None:
            try:
                await handler(msg)
            except ValidationError as exc:
                log.warning("nats.bad_message", subject=msg.subject, error=str(exc))
            except Exception:
                log.exception("nats.handler_failed", subject=msg.subject)

        return run

    async def _on_command(self, msg: Msg) -> None:
        cmd: GatewayCommand = GatewayCommand.decode(msg.data)
        conn = self.connections.get(cmd.robot_id)
        if conn is None:
            return  # not (or no longer) here: the robot gets its jobs when it connects
        if cmd.kind == "disconnect":
            await conn.close(CLOSE_REPLACED, "disconnected by the orchestrator")
        elif cmd.kind == "offer" and cmd.offer is not None:
            # The dispatcher sent the offer itself, and set the robot Working when it claimed it:
            # no database round trip between the job's assignment and the robot hearing of it.
            if not conn.logged_off and cmd.offer.job_id not in conn.active_jobs:
                await self._offer(conn, cmd.offer)
        elif cmd.kind == "offer" and cmd.job_id is not None:
            await self._offer_job(conn, cmd.job_id, cmd.attempt)
        elif cmd.kind in ("stop", "interrupt") and cmd.job_id is not None:
            attempt = cmd.attempt if cmd.attempt is not None else conn.active_jobs.get(cmd.job_id)
            if attempt is not None:
                await conn.send(_control_frame(cmd.kind, cmd.job_id, attempt))

    async def _offer_job(self, conn: Connection, job_id: uuid.UUID, attempt: int | None) -> None:
        if conn.logged_off:
            return  # it is leaving after its one job; the job waits for the robot's next session
        offer = await run_in_transaction(
            self.ctx.sessions, lambda s: store.offer_for(s, conn.robot.id, job_id, attempt)
        )
        if offer is None:
            return  # the job moved on (or is not this robot's): nothing to offer
        await self._offer(conn, offer)
        status = await run_in_transaction(
            self.ctx.sessions, lambda s: store.refresh_status(s, conn.robot.id, conn.connection_id)
        )
        if status is not None:
            await self._publish(subjects.ROBOT_STATUS, store.status_message(conn.robot, status))

    async def _on_job_control(self, msg: Msg) -> None:
        ctl: JobControl = JobControl.decode(msg.data)
        conn = self.connections.get(ctl.robot_id) if ctl.robot_id else None
        if conn is None:
            return
        await conn.send(_control_frame(ctl.command, ctl.job_id, ctl.attempt))

    async def _on_robot_changed(self, msg: Msg) -> None:
        change: RobotChanged = RobotChanged.decode(msg.data)
        conn = self.connections.get(change.robot_id)
        if conn is None or change.change == "activated":
            return
        if change.change == "deactivated":
            # An inactive robot gets no work and is told to stop what it is doing.
            for job_id, attempt in list(conn.active_jobs.items()):
                await conn.send(_control_frame("stop", job_id, attempt, reason="robot deactivated"))
            await conn.close(CLOSE_FORBIDDEN, "robot deactivated")
        else:
            await conn.close(CLOSE_UNAUTHORIZED, f"robot {change.change.replace('_', ' ')}")

    async def _on_job_state(self, msg: Msg) -> None:
        change: JobStateChanged = JobStateChanged.decode(msg.data)
        if change.robot_id is None:
            return
        conn = self.connections.get(change.robot_id)
        if conn is None or not (change.to_state.is_final or change.to_state == JobState.PENDING):
            return
        attempt = conn.active_jobs.pop(change.job_id, None)
        if attempt is None and change.job_id in conn.finished:
            conn.finished.discard(change.job_id)
            return  # our own report ended it, and the status was refreshed with it
        if attempt is not None:
            # The orchestrator ended the job without the robot (lease sweep, retry): stop the script.
            await conn.send(_control_frame("interrupt", change.job_id, attempt, reason="job ended"))
        status = await run_in_transaction(
            self.ctx.sessions, lambda s: store.refresh_status(s, conn.robot.id, conn.connection_id)
        )
        if status is not None:
            await self._publish(subjects.ROBOT_STATUS, store.status_message(conn.robot, status))


__all__ = ["Connection", "Hub", "RobotStatusChanged"]
