"""docs/robot-protocol.md and the gateway say the same thing: each point an outside implementer met.

hello timeout -> error then 1008; a control connection's welcome (resume null, its own seq);
capabilities granted in welcome and enforced; the fields job.stop / job.interrupt really carry;
a robot the orchestrator marked Disconnected keeps no socket (stale: 4408; after its one job: 1000);
the upgrade answers 503 problem+json with Retry-After while the database is down; log lines the
robot mends rather than lose (NUL, over 64 KiB in bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Robot
from rpa_common.models.enums import RobotStatus
from rpa_common.nats import subjects
from rpa_common.nats.messages import RobotChanged
from rpa_protocol import (
    Ack,
    Error,
    Heartbeat,
    Hello,
    JobInterrupt,
    JobRequest,
    JobRequested,
    JobStart,
    JobStatus,
    JobStop,
    LogBatch,
    LogEntry,
    encode,
    parse_gateway_frame,
)
from rpa_protocol.codes import HELLO_TIMEOUT_S, MAX_MESSAGE_BYTES
from rpa_robot.client import log_entry
from tests.gateway.conftest import GatewayProcess, World, assign, free_port, robot_row, wait_robot
from tests.gateway.test_protocol import HELLO, open_robot, recv
from tests.support import eventually


async def closed_with(ws: ClientConnection, within_s: float = 5) -> int | None:
    """Read (and drop) frames until the gateway closes; the close code."""
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(within_s):
            while True:
                await ws.recv()
    return ws.close_code


async def test_no_hello_in_time_gets_an_error_then_1008(gateway: GatewayProcess, world: World) -> None:
    _, key = await world.robot()
    async with connect(gateway.ws_url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        error = await recv(ws, Error, timeout=HELLO_TIMEOUT_S + 5)
        assert (error.code, error.seq, error.field) == ("hello_timeout", 0, "type")
        assert await closed_with(ws) == 1008


async def test_a_control_connection_has_no_resume_and_its_own_seq(
    gateway: GatewayProcess, world: World
) -> None:
    robot_id, key = await world.robot()
    await world.publish("hello")
    hello = Hello(protocol=1, robot_version="t", machine="m", capabilities=["job.request", "telepathy"])
    ws, welcome = await open_robot(gateway, key, hello)
    # No journal to resume, and only the capabilities this gateway knows are granted.
    assert welcome.resume is None and welcome.capabilities == ["job.request"]
    request = JobRequest(seq=1, request_id=uuid.uuid4(), process_name="hello")
    await ws.send(encode(request))
    assert await recv(ws, Ack) == Ack(seq=1)
    first = await recv(ws, JobRequested)
    assert first.seq == 1 and first.job_id is not None and first.error is None
    # The same request again (any seq): deduplicated by request_id, the same job.
    await ws.send(encode(request))
    assert (await recv(ws, JobRequested)).job_id == first.job_id
    # Control connections take no jobs and send no logs.
    log = LogBatch(seq=2, entries=[LogEntry(id=uuid.uuid4(), message="m", at=datetime.now(UTC))])
    await ws.send(encode(log))
    refused = await recv(ws, Error)
    assert (refused.code, refused.field, refused.seq) == ("not_allowed", "type", 2)
    # Its seq is not the robot's journal position, and it changes nothing of the robot's status.
    robot = await robot_row(world.ctx, robot_id)
    assert robot.inbound_seq == 0 and robot.status == RobotStatus.DISCONNECTED
    await ws.close()


async def test_capabilities_are_granted_in_welcome_and_enforced(
    gateway: GatewayProcess, world: World
) -> None:
    robot_id, key = await world.robot()
    hello = HELLO.model_copy(update={"capabilities": ["jobs", "telepathy"]})
    ws, welcome = await open_robot(gateway, key, hello)
    assert welcome.capabilities == ["jobs"]  # unknown ones are ignored, and not granted
    log = LogBatch(seq=1, entries=[LogEntry(id=uuid.uuid4(), message="m", at=datetime.now(UTC))])
    await ws.send(encode(log))
    refused = await recv(ws, Error)
    assert (refused.code, refused.field, refused.seq) == ("not_allowed", "type", 1)
    assert "'logs'" in refused.detail
    await ws.send(encode(JobRequest(seq=1, request_id=uuid.uuid4(), process_name="x")))
    assert "'job.request'" in (await recv(ws, Error)).detail
    assert (await robot_row(world.ctx, robot_id)).inbound_seq == 0
    await ws.close()


async def test_stop_and_interrupt_carry_the_documented_fields(gateway: GatewayProcess, world: World) -> None:
    robot_id, key = await world.robot()
    job_id = await world.job("long", robot_id)
    ws, _ = await open_robot(gateway, key)
    attempt = await assign(world.ctx, job_id, robot_id)
    await recv(ws, JobStart)
    await ws.send(encode(JobStatus(seq=1, job_id=job_id, attempt=attempt, status="running")))
    await recv(ws, Ack)
    # A person's stop (API): no reason, no grace_s.
    await world.control(job_id, "stop")
    raw = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert set(raw) == {"type", "seq", "id", "job_id", "attempt", "reason"} and raw["reason"] is None
    assert isinstance(parse_gateway_frame(json.dumps(raw)), JobStop)
    await world.control(job_id, "interrupt")
    interrupt = await recv(ws, JobInterrupt)
    assert interrupt.reason is None and interrupt.attempt == attempt
    await ws.close()


async def test_deactivation_stops_the_job_with_its_reason_then_closes(
    gateway: GatewayProcess, world: World
) -> None:
    robot_id, key = await world.robot()
    job_id = await world.job("long", robot_id)
    ws, _ = await open_robot(gateway, key)
    attempt = await assign(world.ctx, job_id, robot_id)
    await recv(ws, JobStart)
    msg = RobotChanged(account_id=world.account_id, robot_id=robot_id, change="deactivated")
    await world.ctx.publish(subjects.ROBOT_CHANGED, msg.encode())
    stop = await recv(ws, JobStop)
    assert (stop.job_id, stop.attempt, stop.reason) == (job_id, attempt, "robot deactivated")
    assert await closed_with(ws) == 4403


async def test_a_robot_marked_disconnected_keeps_no_socket(gateway: GatewayProcess, world: World) -> None:
    robot_id, key = await world.robot()
    ws, _ = await open_robot(gateway, key)

    # What the scheduler's sweep does to a robot whose heartbeats it missed.
    async def sweep(session: object) -> None:
        await session.execute(  # type: ignore[attr-defined]
            sa.update(Robot)
            .where(Robot.id == robot_id)
            .values(status=RobotStatus.DISCONNECTED, gateway_id=None)
        )

    await run_in_transaction(world.ctx.sessions, sweep)  # type: ignore[arg-type]
    await ws.send(encode(Heartbeat()))
    assert await closed_with(ws) == 4408
    await asyncio.sleep(1.0)  # no heartbeat flush turns it Ready again
    assert (await robot_row(world.ctx, robot_id)).status == RobotStatus.DISCONNECTED
    # Reconnecting registers it properly.
    ws, _ = await open_robot(gateway, key)
    assert (await robot_row(world.ctx, robot_id)).status == RobotStatus.READY
    await ws.close()


async def test_a_robot_leaving_after_its_job_is_closed_once_its_last_report_is_acked(
    gateway: GatewayProcess, world: World
) -> None:
    robot_id, key = await world.robot()
    job_id = await world.job("hello", robot_id)
    ws, _ = await open_robot(gateway, key, HELLO.model_copy(update={"exit_after_job": True}))
    attempt = await assign(world.ctx, job_id, robot_id)
    await recv(ws, JobStart)
    await ws.send(encode(JobStatus(seq=1, job_id=job_id, attempt=attempt, status="running")))
    await recv(ws, Ack)
    await ws.send(encode(JobStatus(seq=2, job_id=job_id, attempt=attempt, status="successful")))
    assert (await recv(ws, Ack)).seq == 2
    assert await closed_with(ws) == 1000
    robot = await robot_row(world.ctx, robot_id)
    assert robot.status == RobotStatus.DISCONNECTED and robot.gateway_id is None


class TcpProxy:
    """A TCP forwarder the test can cut: the database "goes down" for one gateway only."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.links: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.links:
            writer.transport.abort()
        self.links.clear()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.links += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def proxied_gateway(db_url: str, tmp_path: object) -> AsyncIterator[tuple[GatewayProcess, TcpProxy]]:
    parts = urlsplit(db_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    netloc = parts.netloc.rsplit("@", 1)
    url = urlunsplit(
        parts._replace(
            netloc=f"{netloc[0]}@127.0.0.1:{proxy.port}" if len(netloc) == 2 else f"127.0.0.1:{proxy.port}"
        )
    )
    gw = GatewayProcess(url, tmp_path / "gateway-proxied.log")  # type: ignore[operator]
    await asyncio.to_thread(gw.start)
    yield gw, proxy
    gw.kill()
    await proxy.cut()


async def test_the_upgrade_answers_503_retryable_while_the_database_is_down(
    proxied_gateway: tuple[GatewayProcess, TcpProxy], world: World
) -> None:
    gateway, proxy = proxied_gateway
    _, key = await world.robot()
    ws, _ = await open_robot(gateway, key)  # works while the database answers
    await ws.close()
    await proxy.cut()

    async def refused() -> InvalidStatus | None:
        try:
            async with connect(gateway.ws_url, additional_headers={"Authorization": f"Bearer {key}"}):
                return None
        except InvalidStatus as exc:
            return exc

    err = await eventually(refused, 20, "a refused upgrade")
    response = err.response
    assert response.status_code == 503, response.body
    assert response.headers["Content-Type"] == "application/problem+json"
    assert int(response.headers["Retry-After"]) > 0
    body = json.loads(response.body or b"{}")
    assert body["status"] == 503 and body["retryable"] is True and "database" in body["detail"]


def test_the_robot_mends_log_lines_the_gateway_would_refuse() -> None:
    now = datetime.now(UTC).isoformat()
    nul = log_entry({"id": str(uuid.uuid4()), "level": "Info", "message": "a\x00b", "at": now}, None)
    assert nul.message == "a\ufffdb"
    big = log_entry({"id": str(uuid.uuid4()), "message": "é" * 40_000, "at": now}, None)
    assert len(big.message.encode()) <= MAX_MESSAGE_BYTES and big.message.endswith("[truncated]")
    # Fields the database cannot store are dropped; the line and its id (the SDK's) are kept.
    line_id = str(uuid.uuid4())
    odd = log_entry(
        {"id": line_id, "level": "Loud", "message": "m", "fields": {"k": "\x00"}, "at": now}, None
    )
    assert str(odd.id) == line_id and odd.fields is None and odd.level == "Info"


async def test_a_text_frame_that_is_not_utf8_closes_with_1007(gateway: GatewayProcess, world: World) -> None:
    robot_id, key = await world.robot()
    ws, _ = await open_robot(gateway, key)
    # The WebSocket layer itself refuses a text frame that is not UTF-8 (RFC 6455: close 1007).
    await ws.send(b'{"type": "heartbeat", "seq": 0, "job_id": "\xff"}', text=True)
    assert await closed_with(ws) == 1007
    await wait_robot(world.ctx, robot_id, RobotStatus.DISCONNECTED)
