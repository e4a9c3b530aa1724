"""Robot protocol v1 spoken by hand against a real gateway: authentication, hello/welcome, status,
acks and replays, bad frames, replaced connections, package downloads, job requests."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import sqlalchemy as sa
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from rpa_common.models import AuditRecord, Job, RobotMessage
from rpa_common.models.enums import JobSource, JobState, RobotStatus
from rpa_common.nats import subjects
from rpa_common.nats.messages import RobotChanged, RobotStatusChanged
from rpa_common.service import ServiceContext
from rpa_protocol import (
    Ack,
    Error,
    Heartbeat,
    Hello,
    JobStart,
    JobStatus,
    LogBatch,
    LogEntry,
    Resume,
    Welcome,
    encode,
    parse_gateway_frame,
)
from tests.conftest import ROOT
from tests.gateway.conftest import (
    GatewayProcess,
    World,
    _env,
    assign,
    eventually,
    robot_row,
    wait_robot,
)

F = TypeVar("F")
HELLO = Hello(protocol=1, robot_version="test", machine="test-machine", capabilities=["jobs", "logs"])


async def open_robot(
    gateway: GatewayProcess, key: str, hello: Hello | None = None
) -> tuple[ClientConnection, Welcome]:
    ws = await connect(gateway.ws_url, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=5)
    await ws.send(encode(hello or HELLO))
    welcome = parse_gateway_frame(await asyncio.wait_for(ws.recv(), 5))
    assert isinstance(welcome, Welcome), welcome
    return ws, welcome


async def recv(ws: ClientConnection, kind: type[F], timeout: float = 5) -> F:
    """The next frame of type ``kind``, skipping others."""
    async with asyncio.timeout(timeout):
        while True:
            frame = parse_gateway_frame(await ws.recv())
            if isinstance(frame, kind):
                return frame


def log_entry(**over: Any) -> LogEntry:
    fields: dict[str, Any] = {"id": uuid.uuid4(), "level": "Info", "message": "m", "at": datetime.now(UTC)}
    fields.update(over)
    return LogEntry(**fields)


def log_doc(**over: Any) -> dict[str, Any]:
    """A log entry as JSON, for frames that must be malformed on purpose."""
    doc: dict[str, Any] = json.loads(log_entry().model_dump_json())
    doc.update(over)
    return doc


async def message_count(ctx: ServiceContext, robot_id: uuid.UUID) -> int:
    async with ctx.sessions() as session:
        return int(
            (
                await session.execute(
                    sa.select(sa.func.count())
                    .select_from(RobotMessage)
                    .where(RobotMessage.robot_id == robot_id)
                )
            ).scalar_one()
        )


async def test_wrong_key_and_inactive_robot_are_refused_before_the_upgrade(
    gateway: GatewayProcess, world: World, tmp_path: Path
) -> None:
    robot_id, key = await world.robot()
    _, inactive_key = await world.robot(active=False)
    wrong_secret = key.rsplit("_", 1)[0] + "_" + "x" * 43
    for headers, status in (
        ({}, 401),
        ({"Authorization": "Bearer nonsense"}, 401),
        ({"Authorization": f"Bearer {wrong_secret}"}, 401),
        ({"Authorization": f"Basic {key}"}, 401),
        ({"Authorization": f"Bearer {inactive_key}"}, 403),
    ):
        with pytest.raises(InvalidStatus) as err:
            await connect(gateway.ws_url, additional_headers=headers, open_timeout=5)
        assert err.value.response.status_code == status
        body = json.loads(err.value.response.body or b"{}")
        assert body["status"] == status and "rbk_" not in json.dumps(body).replace("rbk_...", "")
    # The refused robot never looked connected.
    assert (await robot_row(world.ctx, robot_id)).status == RobotStatus.DISCONNECTED
    # The reference robot gives up on a refused key (exit code 3) instead of hammering the gateway.
    proc = subprocess.run(
        [sys.executable, "-m", "rpa_robot", "run", "--gateway", gateway.ws_url, "--key-stdin"],
        input=(wrong_secret + "\n").encode(),
        cwd=ROOT,
        env=_env(RPA_ROBOT_HOME=str(tmp_path / "home")),
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 3, proc.stderr.decode()
    assert wrong_secret not in proc.stderr.decode()


async def test_hello_welcome_status_and_disconnect(
    gateway: GatewayProcess, world: World, nats_inbox: Any
) -> None:
    robot_id, key = await world.robot()
    statuses = await nats_inbox(subjects.ROBOT_STATUS)
    ws, welcome = await open_robot(gateway, key)
    assert welcome.robot_id == robot_id
    assert welcome.heartbeat_interval_s == 0.5
    assert welcome.resume == Resume(last_seq=0)
    assert welcome.capabilities == ["jobs", "logs"]
    robot = await robot_row(world.ctx, robot_id)
    assert robot.status == RobotStatus.READY
    assert robot.gateway_id and robot.connection_id == welcome.connection_id
    assert robot.machine == "test-machine" and robot.version == "test"
    first_beat = robot.last_heartbeat_at
    await ws.send(encode(Heartbeat()))

    async def beat_recorded() -> bool:
        return (await robot_row(world.ctx, robot_id)).last_heartbeat_at > first_beat  # type: ignore[operator]

    await eventually(beat_recorded, 5, "heartbeat stored")
    await ws.close()
    robot = await wait_robot(world.ctx, robot_id, RobotStatus.DISCONNECTED)
    assert robot.gateway_id is None

    async def both_published() -> list[RobotStatus]:
        mine = [RobotStatusChanged.decode(d) for d in statuses]
        seen = [m.status for m in mine if m.robot_id == robot_id]
        return seen if RobotStatus.DISCONNECTED in seen else []

    seen = await eventually(both_published, 5, "ROBOT_STATUS messages")
    assert seen[0] == RobotStatus.READY and seen[-1] == RobotStatus.DISCONNECTED


async def test_frames_are_applied_once_by_seq_and_acknowledged(gateway: GatewayProcess, world: World) -> None:
    robot_id, key = await world.robot()
    ws, welcome = await open_robot(gateway, key)
    first = [log_entry(message="one"), log_entry(message="two", level="Warning", fields={"k": 1})]
    await ws.send(encode(LogBatch(seq=1, entries=first)))
    assert await recv(ws, Ack) == Ack(seq=1)
    # The same frame again (a replay after a lost ack): acknowledged, not applied twice.
    await ws.send(encode(LogBatch(seq=1, entries=first)))
    assert (await recv(ws, Ack)).seq == 1
    # A new frame carrying an already stored line id: that line is ignored, the new one stored.
    await ws.send(encode(LogBatch(seq=2, entries=[first[0], log_entry(message="three")])))
    assert (await recv(ws, Ack)).seq == 2
    # An old frame re-sent once more: the ack says where the robot really is (2), never back to 1.
    await ws.send(encode(LogBatch(seq=1, entries=first)))
    assert (await recv(ws, Ack)).seq == 2
    assert await message_count(world.ctx, robot_id) == 3
    assert (await robot_row(world.ctx, robot_id)).inbound_seq == 2
    await ws.close()
    # After reconnecting, the robot learns where to resume.
    ws, welcome = await open_robot(gateway, key)
    assert welcome.resume == Resume(last_seq=2)
    await ws.send(encode(LogBatch(seq=1, entries=first)))  # older than resume: acked at 2 too
    assert (await recv(ws, Ack)).seq == 2
    await ws.close()


async def test_bad_frames_get_errors_change_nothing_and_too_many_close(
    gateway: GatewayProcess, world: World
) -> None:
    robot_id, key = await world.robot()
    ws, _ = await open_robot(gateway, key)
    bad = [
        ("not json at all", None),
        (json.dumps({"type": "dance", "seq": 1}), "type"),
        (json.dumps({"type": "log", "seq": "1", "entries": [log_doc()]}), "seq"),
        (json.dumps({"type": "log", "seq": 1, "entries": [log_doc(level="Loud")]}), "entries.0.level"),
        (json.dumps({"type": "job.status", "seq": 1, "job_id": str(uuid.uuid4())}), "attempt"),
    ]
    for raw, field in bad:
        await ws.send(raw)
        error = await recv(ws, Error)
        assert error.code == "bad_frame" and error.detail, error
        if field:
            assert error.field == field, error
    # Nothing changed: no line stored, no seq consumed; the connection still works.
    assert await message_count(world.ctx, robot_id) == 0
    assert (await robot_row(world.ctx, robot_id)).inbound_seq == 0
    await ws.send(encode(LogBatch(seq=1, entries=[log_entry()])))
    assert (await recv(ws, Ack)).seq == 1
    # The next bad frame within a minute closes the connection with 1008 (policy violation).
    await ws.send(json.dumps([1, 2, 3]))
    await recv(ws, Error)
    with pytest.raises(ConnectionClosed):
        await recv(ws, Error)
    assert ws.close_code == 1008
    await wait_robot(world.ctx, robot_id, RobotStatus.DISCONNECTED)
    # Text neither database can store (NUL, a lone surrogate) is refused naming the field.
    ws, _ = await open_robot(gateway, key)
    for message in ("a\x00b", "\ud800"):
        await ws.send(json.dumps({"type": "log", "seq": 2, "entries": [log_doc(message=message)]}))
        error = await recv(ws, Error)
        assert (error.code, error.field, error.seq) == ("bad_frame", "entries.0.message", 2), error
    assert await message_count(world.ctx, robot_id) == 1
    await ws.close()


async def test_first_frame_must_be_hello_in_a_supported_version(
    gateway: GatewayProcess, world: World
) -> None:
    _, key = await world.robot()
    headers = {"Authorization": f"Bearer {key}"}
    async with connect(gateway.ws_url, additional_headers=headers) as ws:
        await ws.send(encode(Heartbeat()))
        assert (await recv(ws, Error)).code == "not_allowed"
        with pytest.raises(ConnectionClosed):
            await recv(ws, Error)
        assert ws.close_code == 1008
    async with connect(gateway.ws_url, additional_headers=headers) as ws:
        await ws.send(encode(HELLO.model_copy(update={"protocol": 99})))
        error = await recv(ws, Error)
        assert error.code == "unsupported_protocol" and error.field == "protocol"
        with pytest.raises(ConnectionClosed):
            await recv(ws, Error)
        assert ws.close_code == 4426


async def test_a_second_connection_replaces_the_first(gateway: GatewayProcess, world: World) -> None:
    robot_id, key = await world.robot()
    old, _ = await open_robot(gateway, key)
    new, welcome = await open_robot(gateway, key)
    with pytest.raises(ConnectionClosed):
        await recv(old, Error)
    assert old.close_code == 4409
    await asyncio.sleep(0.3)  # the old connection's goodbye must not mark the robot Disconnected
    robot = await robot_row(world.ctx, robot_id)
    assert robot.status == RobotStatus.READY and robot.connection_id == welcome.connection_id
    await new.close()
    await wait_robot(world.ctx, robot_id, RobotStatus.DISCONNECTED)


async def test_job_offer_package_download_and_status_reports(gateway: GatewayProcess, world: World) -> None:
    robot_id, key = await world.robot()
    other_id, other_key = await world.robot()
    job_id = await world.job("hello", robot_id, {"name": "tester"})
    _, version_id = world.versions["hello"]
    ws, _ = await open_robot(gateway, key)
    attempt = await assign(world.ctx, job_id, robot_id)
    start = await recv(ws, JobStart)
    assert start.job_id == job_id and start.attempt == attempt and start.state == "Starting"
    assert start.input_args == {"name": "tester", "count": 3}  # manifest defaults under job input
    assert start.entry_point == "main.py" and start.process_name == "hello"
    await wait_robot(world.ctx, robot_id, RobotStatus.WORKING, timeout=5)
    async with httpx.AsyncClient(base_url=gateway.http_url) as http:
        url = start.package_url
        ok = await http.get(url, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200
        assert hashlib.sha256(ok.content).hexdigest() == start.sha256 and len(ok.content) == start.size
        # Another robot (no job of this version) and no key: refused.
        assert (await http.get(url, headers={"Authorization": f"Bearer {other_key}"})).status_code == 404
        assert (await http.get(url)).status_code == 401
    # A report for a wrong attempt changes nothing; the right one moves the job.
    await ws.send(encode(JobStatus(seq=1, job_id=job_id, attempt=attempt + 1, status="running")))
    assert (await recv(ws, Ack)).seq == 1
    await ws.send(encode(JobStatus(seq=2, job_id=job_id, attempt=attempt, status="running")))
    await recv(ws, Ack)
    done = JobStatus(seq=3, job_id=job_id, attempt=attempt, status="successful", output={"x": 1})
    await ws.send(encode(done))
    await recv(ws, Ack)
    async with world.ctx.sessions() as session:
        job = (await session.execute(sa.select(Job).where(Job.id == job_id))).scalar_one()
    assert job.state == JobState.SUCCESSFUL and job.output_args == {"x": 1} and job.started_at is not None
    robot = await wait_robot(world.ctx, robot_id, RobotStatus.READY, timeout=5)
    assert robot.current_job_id is None
    # The package is no longer downloadable once the job is over.
    async with httpx.AsyncClient(base_url=gateway.http_url) as http:
        gone = await http.get(f"/robot/v1/packages/{version_id}", headers={"Authorization": f"Bearer {key}"})
        assert gone.status_code == 404
    await ws.close()
    assert other_id != robot_id


async def test_start_process_asks_the_orchestrator_for_a_job(gateway: GatewayProcess, world: World) -> None:
    robot_id, key = await world.robot()
    await world.publish("hello")
    main, _ = await open_robot(gateway, key)  # the robot's own connection must survive the request

    def start_process(name: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "rpa_robot",
                "start-process",
                name,
                "--gateway",
                gateway.ws_url,
                "--input",
                '{"count": 1}',
            ],
            cwd=ROOT,
            env=_env(RPA_ROBOT_KEY=key),
            capture_output=True,
            timeout=30,
        )

    proc = await asyncio.to_thread(start_process, "hello")
    assert proc.returncode == 0, proc.stderr.decode()
    job_id = uuid.UUID(json.loads(proc.stdout)["job_id"])
    async with world.ctx.sessions() as session:
        job = (await session.execute(sa.select(Job).where(Job.id == job_id))).scalar_one()
        audit = (
            await session.execute(sa.select(AuditRecord).where(AuditRecord.object_id == str(job_id)))
        ).scalar_one()
    assert job.state == JobState.PENDING and job.source == JobSource.ROBOT
    assert job.robot_id == robot_id and job.input_args == {"count": 1}
    assert audit.actor_id == robot_id and audit.action == "create"
    missing = await asyncio.to_thread(start_process, "no-such-process")
    assert missing.returncode == 1 and b"no process named" in missing.stderr
    # The main connection is untouched and still Ready.
    await main.send(encode(Heartbeat()))
    assert (await robot_row(world.ctx, robot_id)).status == RobotStatus.READY
    await main.close()


@pytest.mark.parametrize(
    ("change", "code"), [("deactivated", 4403), ("key_rotated", 4401), ("deleted", 4401)]
)
async def test_robot_changes_close_its_connection(
    gateway: GatewayProcess, world: World, change: str, code: int
) -> None:
    robot_id, key = await world.robot()
    ws, _ = await open_robot(gateway, key)
    msg = RobotChanged(account_id=world.account_id, robot_id=robot_id, change=change)  # type: ignore[arg-type]
    await world.ctx.publish(subjects.ROBOT_CHANGED, msg.encode())
    with pytest.raises(ConnectionClosed):
        await recv(ws, Welcome)
    assert ws.close_code == code
    await wait_robot(world.ctx, robot_id, RobotStatus.DISCONNECTED)
