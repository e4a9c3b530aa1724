"""Serving one robot connection: hello, registration, its frames in order, and its end.

A main connection (``hello`` with the ``jobs`` capability) registers the robot on this replica and
replaces any earlier connection of the robot; a control connection only asks for jobs. Reliable
frames go to the group-commit writer one at a time, so a connection's frames are applied and
acknowledged in order, and only after their commit.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog
from prometheus_client import Counter
from starlette.websockets import WebSocket, WebSocketDisconnect

from rpa_common import metrics
from rpa_common.db.uow import run_in_transaction
from rpa_common.models.base import utcnow
from rpa_common.models.enums import JobState, RobotStatus
from rpa_common.nats import subjects
from rpa_common.nats.messages import GatewayCommand
from rpa_gateway import store
from rpa_gateway.connection import Connection
from rpa_gateway.tasks import refused
from rpa_gateway.writer import Applied, Batched, Request, Source, WriterUnavailable
from rpa_protocol import (
    PROTOCOL_VERSION,
    SUPPORTED_PROTOCOLS,
    Ack,
    BadFrame,
    Heartbeat,
    Hello,
    JobRequest,
    JobRequested,
    JobStatus,
    LogBatch,
    ReplyError,
    ResourceGet,
    Resume,
    TaskAdd,
    TaskTake,
    Welcome,
    parse_robot_frame,
)
from rpa_protocol.codes import (
    CAPABILITY_JOB_REQUEST,
    CAPABILITY_JOBS,
    CAPABILITY_LOGS,
    CAPABILITY_RESOURCES,
    CAPABILITY_TASKS,
    CLOSE_FORBIDDEN,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_REPLACED,
    CLOSE_RESTART,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNSUPPORTED,
    ERROR_HELLO_TIMEOUT,
    ERROR_NOT_ALLOWED,
    ERROR_REJECTED,
    ERROR_UNSUPPORTED_PROTOCOL,
    HELLO_TIMEOUT_S,
    MAX_WATCHES,
)

if TYPE_CHECKING:
    from rpa_gateway.hub import Hub

log = structlog.get_logger(__name__)

# The capability each reliable frame needs on its connection.
_NEEDS = {
    "job.status": CAPABILITY_JOBS,
    "log": CAPABILITY_LOGS,
    "job.request": CAPABILITY_JOB_REQUEST,
    "task.add": CAPABILITY_TASKS,
    "task.take": CAPABILITY_TASKS,
    "task.renew": CAPABILITY_TASKS,
    "task.progress": CAPABILITY_TASKS,
    "task.finish": CAPABILITY_TASKS,
    "resource.get": CAPABILITY_RESOURCES,
    "resource.set": CAPABILITY_RESOURCES,
    "credential.get": CAPABILITY_RESOURCES,
}
# The capabilities this gateway grants (a robot learns from ``welcome`` what is missing).
_GRANTED = frozenset(
    {CAPABILITY_JOBS, CAPABILITY_LOGS, CAPABILITY_JOB_REQUEST, CAPABILITY_TASKS, CAPABILITY_RESOURCES}
)
# Tasks and resources are the business of a robot's main connection (its journal, its jobs).
_MAIN_ONLY = frozenset({CAPABILITY_TASKS, CAPABILITY_RESOURCES})


_FRAMES: dict[str, Counter] = {}


def _count_frame(kind: str) -> None:
    """``rpa_gateway_frames{type}``: the label child cached per frame type (a bounded set: the
    protocol's types, and ``invalid`` for what did not parse)."""
    child = _FRAMES.get(kind)
    if child is None:
        child = _FRAMES[kind] = metrics.FRAMES_RECEIVED.labels(kind)
    child.inc()


class ConnectionHandler:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.ctx = hub.ctx

    async def serve(self, ws: WebSocket, robot: store.RobotIdentity) -> None:
        """Run one accepted connection to its end."""
        conn = Connection(ws, robot)
        hello = await self._receive_hello(conn)
        if hello is None:
            return
        conn.capabilities = frozenset(c for c in hello.capabilities if c in _GRANTED)
        if CAPABILITY_JOBS not in conn.capabilities:
            conn.control = True
            conn.capabilities -= _MAIN_ONLY
            await conn.send(self._welcome(conn, resume=None))
            await self._receive_loop(conn)
            return
        conn.single_job = hello.exit_after_job
        connections = self.hub.connections
        previous = connections.get(robot.id)
        connections[robot.id] = conn
        metrics.ROBOTS_CONNECTED.set(len(connections))
        if previous is not None:
            await previous.close(CLOSE_REPLACED, "another connection of this robot took over")
        try:
            try:
                attached = await self._attach(conn, hello)
            except Exception as exc:
                log.exception("robot.attach_failed", robot_id=str(robot.id))
                await conn.close(CLOSE_RESTART, f"could not register the connection: {type(exc).__name__}")
                return
            if attached:
                await self._receive_loop(conn)
        finally:
            if connections.get(robot.id) is conn:
                del connections[robot.id]
                metrics.ROBOTS_CONNECTED.set(len(connections))
            if not conn.logged_off:
                await self._detach(conn)

    def _welcome(self, conn: Connection, resume: Resume | None, unlicensed: str | None = None) -> Welcome:
        return Welcome(
            protocol=PROTOCOL_VERSION,
            robot_id=conn.robot.id,
            robot_name=conn.robot.name,
            connection_id=conn.connection_id,
            heartbeat_interval_s=self.ctx.settings.heartbeat_interval_s,
            resume=resume,
            capabilities=sorted(conn.capabilities),
            server_time=utcnow(),
            unlicensed=unlicensed,
        )

    async def _receive_hello(self, conn: Connection) -> Hello | None:
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                message = await conn.ws.receive()
        except TimeoutError:
            await conn.send_error(
                BadFrame(f"no 'hello' within {HELLO_TIMEOUT_S:g} s", field="type", code=ERROR_HELLO_TIMEOUT)
            )
            await conn.close(CLOSE_POLICY, "hello expected")
            return None
        if message["type"] == "websocket.disconnect":
            return None
        try:
            try:
                frame = parse_robot_frame(
                    message.get("text") if message.get("text") is not None else message.get("bytes")
                )
            except BadFrame:
                _count_frame("invalid")
                raise
            _count_frame(frame.type)
            if not isinstance(frame, Hello):
                raise BadFrame("the first frame must be 'hello'", field="type", code=ERROR_NOT_ALLOWED)
        except BadFrame as exc:
            await conn.send_error(exc)
            await conn.close(CLOSE_POLICY, "hello expected")
            return None
        if frame.protocol not in SUPPORTED_PROTOCOLS:
            await conn.send_error(
                BadFrame(
                    f"protocol {frame.protocol} is not supported; supported: {sorted(SUPPORTED_PROTOCOLS)}",
                    field="protocol",
                    code=ERROR_UNSUPPORTED_PROTOCOL,
                )
            )
            await conn.close(CLOSE_UNSUPPORTED, "unsupported protocol version")
            return None
        return frame

    async def _attach(self, conn: Connection, hello: Hello) -> bool:
        robot = conn.robot
        hub = self.hub
        attached = await run_in_transaction(
            self.ctx.sessions,
            lambda s: store.attach(
                s,
                robot.id,
                gateway_id=hub.gateway_id,
                connection_id=conn.connection_id,
                hello=hello,
                lease_s=self.ctx.settings.job_lease_s,
                license_required=self.ctx.settings.license_required,
            ),
        )
        if attached is None:
            await conn.close(CLOSE_UNAUTHORIZED, "robot no longer exists")
            return False
        if not attached.is_active:
            await conn.close(CLOSE_FORBIDDEN, "robot is inactive")
            return False
        if attached.previous_gateway_id not in (None, hub.gateway_id):
            # The previous connection lives on another replica: tell it to let go.
            await hub.publish(
                subjects.gateway_inbox(attached.previous_gateway_id),
                GatewayCommand(robot_id=robot.id, kind="disconnect"),
            )
        log.info(
            "robot.connected",
            robot_id=str(robot.id),
            connection_id=str(conn.connection_id),
            robot_version=hello.robot_version,
            attended=hello.attended,
            unlicensed=attached.unlicensed,
        )
        conn.acked = attached.inbound_seq
        await conn.send(
            self._welcome(conn, resume=Resume(last_seq=attached.inbound_seq), unlicensed=attached.unlicensed)
        )
        # Reconciliation on reconnect: every job the database gives the robot, offered again.
        for offer in attached.offers:
            await conn.offer(offer)
        await hub.publish(subjects.ROBOT_STATUS, store.status_message(robot, attached.status))
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
            await self.hub.publish(
                subjects.ROBOT_STATUS, store.status_message(conn.robot, RobotStatus.DISCONNECTED)
            )

    async def _receive_loop(self, conn: Connection) -> None:
        while not conn.closing:
            try:
                message = await conn.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text") if message.get("text") is not None else message.get("bytes")
            try:
                try:
                    frame = parse_robot_frame(raw)
                except BadFrame:
                    _count_frame("invalid")
                    raise
                _count_frame(frame.type)
                if isinstance(frame, Hello):
                    raise BadFrame(
                        "'hello' was already received on this connection",
                        field="type",
                        code=ERROR_NOT_ALLOWED,
                    )
                if not isinstance(frame, Heartbeat) and _NEEDS[frame.type] not in conn.capabilities:
                    kind = "a control connection" if conn.control else "this connection"
                    raise BadFrame(
                        f"'{frame.type}' needs the '{_NEEDS[frame.type]}' capability, which {kind} did not announce",
                        field="type",
                        ref_seq=frame.seq,
                        code=ERROR_NOT_ALLOWED,
                    )
            except BadFrame as exc:
                await conn.send_error(exc)
                if conn.too_many_bad():
                    await conn.close(CLOSE_POLICY, "too many bad frames")
                    return
                continue
            if isinstance(frame, Heartbeat):
                if not conn.control and not conn.logged_off:
                    self.hub.heartbeats.heard(conn.robot.id)
                continue
            if isinstance(frame, TaskAdd | TaskTake) and frame.job_id not in (None, *conn.active_jobs):
                if isinstance(frame, TaskTake):
                    await self._refuse(conn, frame, "invalid", "not a job this robot runs now", "job_id")
                    continue
                # A journaled add may be replayed after its job ended: its tasks are kept, unlinked
                # (as log lines of a job that is not the robot's are).
                frame = frame.model_copy(update={"job_id": None})
            if isinstance(frame, ResourceGet) and frame.watch and not conn.may_watch(frame.name):
                await self._refuse(
                    conn, frame, "too_many", f"a connection watches at most {MAX_WATCHES} resources", "watch"
                )
                continue
            await self._apply(conn, frame)

    async def _refuse(self, conn: Connection, frame: Request, code: str, detail: str, field: str) -> None:
        """A request refused before the database: its reply's ``error``."""
        await conn.send(refused(frame, ReplyError(code=code, detail=detail, field=field)))

    async def _apply(self, conn: Connection, frame: Batched) -> None:
        source = Source(conn.robot, conn.connection_id, conn.control, conn.single_job)
        try:
            applied = await self.hub.writer.apply(source, frame)
        except WriterUnavailable as exc:
            # Not acked: the robot keeps the frame and sends it again after reconnecting.
            log.warning("frame.apply_failed", robot_id=str(conn.robot.id), seq=frame.seq, type=frame.type)
            await conn.close(CLOSE_RESTART, f"could not store frame: {exc}")
            return
        if applied.rejected is not None:
            await conn.send_error(BadFrame(applied.rejected, ref_seq=frame.seq, code=ERROR_REJECTED))
            return
        await self._after_commit(conn, frame, applied)

    async def _after_commit(self, conn: Connection, frame: Batched, applied: Applied) -> None:
        publish = self.hub.publish
        if applied.reply is not None:
            # The reply before the ack: a connection lost between the two leaves the frame
            # journaled, and its replay is answered (``duplicate``); the other way round the robot
            # would forget the frame without ever hearing its answer.
            if applied.watch is not None:
                conn.watch(applied.watch)
            await conn.send(applied.reply)
            if not isinstance(frame, Request):
                await conn.send(Ack(seq=conn.next_ack(frame.seq)))
            return
        for t in applied.transitions:
            if t.to_state.is_final or t.to_state == JobState.PENDING:
                conn.active_jobs.pop(t.job_id, None)
                if len(conn.finished) > 256:  # echoes lost on the way: forget them
                    conn.finished.clear()
                conn.finished.add(t.job_id)
        if applied.status == RobotStatus.DISCONNECTED:
            conn.logged_off = True
        await conn.send(Ack(seq=conn.next_ack(frame.seq)))
        if isinstance(frame, JobRequest):
            await conn.send(
                JobRequested(
                    seq=frame.seq,
                    request_id=frame.request_id,
                    job_id=applied.job_id,
                    error=applied.request_error,
                )
            )
            if applied.created is not None:
                await publish(subjects.JOB_CREATED, applied.created)
        for t in applied.transitions:
            await publish(subjects.JOB_STATE, t.message())
            for created in t.created:  # jobs its end started (job completion triggers)
                await publish(subjects.JOB_CREATED, created)
        if applied.status is not None:
            await publish(subjects.ROBOT_STATUS, store.status_message(conn.robot, applied.status))
        if conn.logged_off and isinstance(frame, JobStatus | LogBatch):
            # Its one job is over and acknowledged: a robot marked Disconnected keeps no socket.
            await conn.close(CLOSE_NORMAL, "logged off after its job")
