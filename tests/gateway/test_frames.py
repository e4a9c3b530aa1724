"""rpa_protocol on its own: every frame round-trips, the committed JSON Schema is current and agrees
with the models, and text a database cannot store (NUL, invalid UTF-8, over-long) is refused naming
the field."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from rpa_protocol import (
    Ack,
    BadFrame,
    CredentialGet,
    CredentialValue,
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
    ReplyError,
    ResourceChanged,
    ResourceGet,
    ResourceSet,
    ResourceValue,
    Resume,
    TakenTask,
    TaskAdd,
    TaskAdded,
    TaskFinish,
    TaskFinished,
    TaskItem,
    TaskProgress,
    TaskProgressed,
    TaskRenew,
    TaskRenewed,
    TaskTake,
    TaskTaken,
    Welcome,
    command_id,
    encode,
    parse_gateway_frame,
    parse_robot_frame,
)
from rpa_protocol.codes import MAX_MESSAGE_BYTES, MAX_TASKS_PER_ADD, MAX_TEXT_VALUE_BYTES
from rpa_protocol.schema import SCHEMA_PATH, render

NOW = datetime.now(UTC)
JOB = uuid.uuid4()


def robot_frames() -> list[BaseModel]:
    return [
        Hello(protocol=1, robot_version="1.0", machine="WS-1", capabilities=["jobs", "logs"]),
        Heartbeat(job_id=JOB),
        Heartbeat(),
        JobStatus(seq=1, job_id=JOB, attempt=1, status="successful", output={"a": [1, "x"]}, at=NOW),
        LogBatch(
            seq=2,
            entries=[LogEntry(id=uuid.uuid4(), level="Warning", message="é" * 10, fields={"k": 1}, at=NOW)],
        ),
        JobRequest(seq=3, request_id=uuid.uuid4(), process_name="invoices", input_args={"m": 1}),
        TaskAdd(
            seq=4,
            request_id=uuid.uuid4(),
            queue="invoices",
            tasks=[
                TaskItem(name="inv-1"),
                TaskItem(
                    name="inv-2",
                    parameters={"amount": 12.5, "lines": [1, 2]},
                    priority="high",
                    tags=["eu"],
                    deadline=NOW,
                    delay_until=NOW,
                    description="second",
                ),
            ],
            job_id=JOB,
        ),
        TaskTake(seq=5, request_id=uuid.uuid4(), queue="invoices", job_id=JOB, lock_s=60),
        TaskTake(seq=6, request_id=uuid.uuid4(), queue="invoices"),
        TaskRenew(seq=7, request_id=uuid.uuid4(), task_id=uuid.uuid4(), lock_token=3, lock_s=120),
        TaskProgress(seq=8, request_id=uuid.uuid4(), task_id=uuid.uuid4(), lock_token=3, note="page 2"),
        TaskFinish(
            seq=9,
            request_id=uuid.uuid4(),
            task_id=uuid.uuid4(),
            lock_token=3,
            outcome="failed_business",
            reason="no such customer",
            output={"checked": 3},
        ),
        ResourceGet(seq=10, request_id=uuid.uuid4(), name="tax-rate", watch=True),
        ResourceSet(seq=11, request_id=uuid.uuid4(), name="last-run", value="2026-01-31"),
        CredentialGet(seq=12, request_id=uuid.uuid4(), name="erp-login"),
    ]


def gateway_frames() -> list[BaseModel]:
    return [
        Welcome(
            protocol=1,
            robot_id=uuid.uuid4(),
            robot_name="r",
            connection_id=uuid.uuid4(),
            heartbeat_interval_s=15.0,
            resume=Resume(last_seq=4),
            capabilities=["jobs"],
            server_time=NOW,
        ),
        Welcome(
            protocol=1,
            robot_id=uuid.uuid4(),
            robot_name="r",
            connection_id=uuid.uuid4(),
            heartbeat_interval_s=15.0,
            resume=None,
            server_time=NOW,
        ),
        Ack(seq=7),
        Error(seq=3, code="bad_frame", detail="x: wrong", field="x"),
        JobStart(
            id=command_id(JOB, 1, "start"),
            job_id=JOB,
            attempt=1,
            state="Starting",
            process_id=uuid.uuid4(),
            process_name="p",
            version_id=uuid.uuid4(),
            version="1.0",
            sha256="0" * 64,
            size=10,
            entry_point="main.py",
            input_args={},
            package_url="/robot/v1/packages/x",
        ),
        JobStop(id=command_id(JOB, 1, "stop"), job_id=JOB, attempt=1, reason="robot deactivated"),
        JobInterrupt(id=command_id(JOB, 1, "interrupt"), job_id=JOB, attempt=1),
        JobRequested(seq=3, request_id=uuid.uuid4(), job_id=None, error="no process named 'x'"),
        TaskAdded(seq=4, request_id=uuid.uuid4(), task_ids=[uuid.uuid4(), uuid.uuid4()]),
        TaskAdded(
            seq=4,
            request_id=uuid.uuid4(),
            error=ReplyError(code="duplicate_name", detail="a task named 'a' exists", field="tasks.0.name"),
        ),
        TaskAdded(seq=4, request_id=uuid.uuid4(), duplicate=True),
        TaskTaken(
            seq=5,
            request_id=uuid.uuid4(),
            task=TakenTask(
                id=uuid.uuid4(),
                queue="invoices",
                name="inv-1",
                parameters={"a": 1},
                priority="normal",
                tags=["eu"],
                deadline=None,
                retry_number=1,
                lock_token=7,
                lock_expires_at=NOW,
            ),
        ),
        TaskTaken(seq=6, request_id=uuid.uuid4(), task=None),
        TaskRenewed(seq=7, request_id=uuid.uuid4(), lock_expires_at=NOW),
        TaskRenewed(
            seq=7,
            request_id=uuid.uuid4(),
            error=ReplyError(code="stale_token", detail="x", field="lock_token"),
        ),
        TaskProgressed(seq=8, request_id=uuid.uuid4()),
        TaskFinished(seq=9, request_id=uuid.uuid4(), retry_task_id=uuid.uuid4()),
        ResourceValue(seq=10, request_id=uuid.uuid4(), name="tax-rate", kind="text", text="0.2"),
        ResourceValue(
            seq=10,
            request_id=uuid.uuid4(),
            name="holidays",
            kind="calendar",
            calendar={"time_zone": "Europe/Paris", "weekend_days": [5, 6], "days": []},
        ),
        ResourceValue(
            seq=10,
            request_id=uuid.uuid4(),
            name="x",
            error=ReplyError(code="resource_not_found", detail="no resource named 'x'", field="name"),
        ),
        CredentialValue(
            seq=12, request_id=uuid.uuid4(), name="erp-login", login="bot", password="s3cret", expired=False
        ),
        ResourceChanged(name="tax-rate", kind="text", text="0.21"),
    ]


def test_committed_schema_is_current() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render(), (
        "docs/robot-protocol.schema.json is stale: run .venv/bin/python -m rpa_protocol.schema --write"
    )


def test_every_frame_round_trips_and_validates_against_the_schema() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    robot_schema = jsonschema.Draft202012Validator({**schema, "oneOf": [{"$ref": "#/$defs/RobotFrame"}]})
    for frame in robot_frames():
        text = encode(frame)
        assert parse_robot_frame(text) == frame
        robot_schema.validate(json.loads(text))
    for frame in gateway_frames():
        text = encode(frame)
        assert parse_gateway_frame(text) == frame
        validator.validate(json.loads(text))
    # What the gateway refuses, the schema refuses too.
    for bad in (
        {"type": "log", "seq": 1, "entries": []},
        {"type": "heartbeat", "seq": 0, "extra": 1},
        {"type": "job.status", "seq": 1, "job_id": str(JOB), "attempt": 1},
        {"type": "hello", "protocol": 1, "robot_version": "1", "machine": "m\x00"},
        {"seq": 1},
    ):
        with pytest.raises(jsonschema.ValidationError):
            robot_schema.validate(bad)
        with pytest.raises(BadFrame):
            parse_robot_frame(json.dumps(bad))


def _bad(doc: dict[str, Any]) -> BadFrame:
    with pytest.raises(BadFrame) as err:
        parse_robot_frame(json.dumps(doc))
    return err.value


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"type": "hello", "protocol": 1, "robot_version": "1\x00", "machine": "m"}, "robot_version"),
        ({"type": "hello", "protocol": 1, "robot_version": "1", "machine": "m", "capabilities": ["\x00"]}, "capabilities.0"),
        ({"type": "job.request", "seq": 1, "request_id": str(JOB), "process_name": "a\x00"}, "process_name"),
        ({"type": "job.request", "seq": 1, "request_id": str(JOB), "process_name": "a", "input_args": {"k": {"x": ["\x00"]}}}, "input_args"),
        ({"type": "job.request", "seq": 1, "request_id": str(JOB), "process_name": "a", "input_args": {"k\x00": 1}}, "input_args"),
        ({"type": "job.status", "seq": 1, "job_id": str(JOB), "attempt": 1, "status": "failed", "error": "\x00"}, "error"),
        ({"type": "job.status", "seq": 1, "job_id": str(JOB), "attempt": 1, "status": "failed", "output": {"o": "\ud800"}}, "output"),
        ({"type": "log", "seq": 1, "entries": [{"id": str(JOB), "message": "\ud83d", "at": NOW.isoformat()}]}, "entries.0.message"),
        ({"type": "log", "seq": 1, "entries": [{"id": str(JOB), "message": "m", "fields": {"f": "\x00"}, "at": NOW.isoformat()}]}, "entries.0.fields"),
    ],
)  # fmt: skip
def test_nul_and_invalid_utf8_are_refused_naming_the_field(doc: dict[str, Any], field: str) -> None:
    err = _bad(doc)
    assert err.field == field and err.code == "bad_frame", err.detail
    assert "NUL" in err.detail or "UTF-8" in err.detail


def test_the_message_limit_counts_bytes_not_characters() -> None:
    def log(message: str) -> dict[str, Any]:
        entry = {"id": str(uuid.uuid4()), "message": message, "at": NOW.isoformat()}
        return {"type": "log", "seq": 1, "entries": [entry]}

    assert isinstance(parse_robot_frame(json.dumps(log("a" * MAX_MESSAGE_BYTES))), LogBatch)
    assert isinstance(parse_robot_frame(json.dumps(log("é" * (MAX_MESSAGE_BYTES // 2)))), LogBatch)
    # 40,000 characters are fewer than 65,536, but 80,000 bytes are more.
    err = _bad(log("é" * 40_000))
    assert err.field == "entries.0.message" and "bytes" in err.detail
    assert _bad(log("a" * (MAX_MESSAGE_BYTES + 1))).field == "entries.0.message"


def test_gateway_frames_are_read_leniently_and_robot_frames_strictly() -> None:
    # A robot ignores gateway fields and frame types it does not know (section 4 of the document).
    ack = parse_gateway_frame(json.dumps({"type": "ack", "seq": 2, "new_field": True}))
    assert ack == Ack(seq=2)
    assert parse_gateway_frame(json.dumps({"type": "task.offer", "seq": 0})) is None
    # The gateway refuses robot fields and types it does not know.
    assert _bad({"type": "heartbeat", "seq": 0, "new_field": 1}).field == "new_field"
    assert _bad({"type": "task.cancel", "seq": 3}).field == "type"
    assert _bad({"type": "task.cancel", "seq": 3}).ref_seq == 3
    # Numbers are numbers.
    assert _bad({"type": "log", "seq": "1", "entries": []}).field == "seq"
    with pytest.raises(BadFrame):
        parse_robot_frame(b"{}")
    with pytest.raises(BadFrame):
        parse_robot_frame("[1]")


def test_a_password_is_not_in_the_repr_of_its_frame() -> None:
    frame = CredentialValue(seq=1, request_id=uuid.uuid4(), name="erp", login="bot", password="pa55-word")
    assert "pa55-word" not in repr(frame) and "pa55-word" not in str(frame)
    assert "pa55-word" in encode(frame)  # on the wire it is there, to the robot only


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"type": "task.add", "seq": 1, "request_id": str(JOB), "queue": "q", "tasks": []}, "tasks"),
        ({"type": "task.add", "seq": 1, "request_id": str(JOB), "queue": "", "tasks": [{"name": "a"}]}, "queue"),
        ({"type": "task.add", "seq": 1, "request_id": str(JOB), "queue": "q", "tasks": [{"name": "a"}, {"name": ""}]}, "tasks.1.name"),
        ({"type": "task.add", "seq": 1, "request_id": str(JOB), "queue": "q", "tasks": [{"name": "a", "priority": "urgent"}]}, "tasks.0.priority"),
        ({"type": "task.add", "seq": 1, "request_id": str(JOB), "queue": "q", "tasks": [{"name": "a", "parameters": {"k": "\x00"}}]}, "tasks.0.parameters"),
        ({"type": "task.add", "seq": 1, "request_id": str(JOB), "queue": "q", "tasks": [{"name": "a", "deadline": "2026-01-01T00:00:00"}]}, "tasks.0.deadline"),
        ({"type": "task.add", "seq": 1, "request_id": str(JOB), "queue": "q", "tasks": [{"name": "a", "extra": 1}]}, "tasks.0.extra"),
        ({"type": "task.add", "seq": 1, "queue": "q", "tasks": [{"name": "a"}]}, "request_id"),
        ({"type": "task.take", "seq": 0, "request_id": str(JOB), "queue": "q"}, "seq"),
        ({"type": "task.take", "seq": 1, "request_id": str(JOB), "queue": "q", "lock_s": 1}, "lock_s"),
        ({"type": "task.renew", "seq": 1, "request_id": str(JOB), "task_id": str(JOB), "lock_token": 0}, "lock_token"),
        ({"type": "task.renew", "seq": 1, "request_id": str(JOB), "task_id": str(JOB), "lock_token": "1"}, "lock_token"),
        ({"type": "task.finish", "seq": 1, "request_id": str(JOB), "task_id": str(JOB), "lock_token": 1, "outcome": "done"}, "outcome"),
        ({"type": "task.finish", "seq": 1, "request_id": str(JOB), "task_id": "nope", "lock_token": 1, "outcome": "successful"}, "task_id"),
        ({"type": "task.progress", "seq": 1, "request_id": str(JOB), "task_id": str(JOB), "lock_token": 1, "note": ""}, "note"),
        ({"type": "resource.get", "seq": 1, "request_id": str(JOB), "name": "x", "watch": "yes"}, "watch"),
        ({"type": "resource.set", "seq": 1, "request_id": str(JOB), "name": "x", "value": 3}, "value"),
        ({"type": "resource.set", "seq": 1, "request_id": str(JOB), "name": "x", "value": "\ud800"}, "value"),
        ({"type": "credential.get", "seq": 1, "request_id": str(JOB), "name": "x" * 101}, "name"),
    ],
)  # fmt: skip
def test_bad_task_and_resource_frames_name_the_field(doc: dict[str, Any], field: str) -> None:
    err = _bad(doc)
    assert err.field == field and err.code == "bad_frame", err.detail


def test_task_and_resource_limits() -> None:
    many = [{"name": f"t{i}"} for i in range(MAX_TASKS_PER_ADD)]
    frame = {"type": "task.add", "seq": 1, "request_id": str(JOB), "queue": "q", "tasks": many}
    assert len(parse_robot_frame(json.dumps(frame)).tasks) == MAX_TASKS_PER_ADD  # type: ignore[union-attr]
    frame["tasks"] = [*many, {"name": "one too many"}]
    assert _bad(frame).field == "tasks"
    value = {"type": "resource.set", "seq": 1, "request_id": str(JOB), "name": "x"}
    assert isinstance(
        parse_robot_frame(json.dumps({**value, "value": "a" * MAX_TEXT_VALUE_BYTES})), ResourceSet
    )
    err = _bad({**value, "value": "é" * (MAX_TEXT_VALUE_BYTES // 2 + 1)})
    assert err.field == "value" and "bytes" in err.detail


def test_the_short_way_and_the_long_way_agree() -> None:
    """A text frame is validated straight from its JSON first; what it accepts must equal what
    ``json.loads`` and the models make of it, and what JSON does not have is refused either way."""
    from rpa_protocol.wire import _robot

    for frame in robot_frames():
        text = encode(frame)
        assert parse_robot_frame(text) == _robot.validate_python(json.loads(text)) == frame
    line = {"id": str(JOB), "message": "m", "at": NOW.isoformat()}
    for fields in ({"big": 10**30, "f": 1.5e308, "deep": [[[{"a": None}]]]}, {"dup": 1}):
        text = json.dumps({"type": "log", "seq": 1, "entries": [{**line, "fields": fields}]})
        assert parse_robot_frame(text) == _robot.validate_python(json.loads(text))
    # Duplicate keys: the last one counts, as json.loads reads them (``type`` too).
    text = '{"type": "log", "seq": 1, "seq": 2, "entries": [' + json.dumps(line) + "]}"
    assert parse_robot_frame(text).seq == 2  # type: ignore[union-attr]
    assert parse_robot_frame('{"type": "log", "seq": 0, "type": "heartbeat"}') == Heartbeat(seq=0)
    # ``type`` anywhere: a robot need not write it first.
    text = json.dumps({"seq": 3, "entries": [line], "type": "log"})
    assert parse_robot_frame(text) == _robot.validate_python(json.loads(text))
    # pydantic-core's parser alone would take these; the gateway does not.
    for constant in ("NaN", "Infinity", "-Infinity"):
        text = '{"type": "log", "seq": 1, "entries": [{"id": "%s", "message": "m", "at": "%s", "fields": {"x": %s}}]}'
        with pytest.raises(BadFrame, match="not JSON"):
            parse_robot_frame(text % (JOB, NOW.isoformat(), constant))
    # A message that merely mentions them is a message like any other.
    assert parse_robot_frame(
        json.dumps({"type": "log", "seq": 1, "entries": [{**line, "message": "x is NaN"}]})
    )
