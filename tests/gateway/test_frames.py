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
    Resume,
    Welcome,
    command_id,
    encode,
    parse_gateway_frame,
    parse_robot_frame,
)
from rpa_protocol.codes import MAX_MESSAGE_BYTES
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
    assert _bad({"type": "task.finish", "seq": 3}).field == "type"
    assert _bad({"type": "task.finish", "seq": 3}).ref_seq == 3
    # Numbers are numbers.
    assert _bad({"type": "log", "seq": "1", "entries": []}).field == "seq"
    with pytest.raises(BadFrame):
        parse_robot_frame(b"{}")
    with pytest.raises(BadFrame):
        parse_robot_frame("[1]")
