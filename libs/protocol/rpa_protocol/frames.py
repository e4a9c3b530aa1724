"""Every frame of robot protocol v1, both directions, discriminated by ``type``.

Robot -> gateway frames refuse unknown fields (a typo is a bug the robot should hear about);
gateway -> robot frames ignore them (robots must ignore what a newer gateway adds, see
docs/robot-protocol.md section 4). Strings refuse NUL characters and text that is not valid UTF-8
(lone surrogates from ``\\ud800`` escapes), also inside JSON objects (``input_args``, ``output``,
``fields``), because neither database can store them.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
)

from rpa_protocol.codes import MAX_ERROR_CHARS, MAX_LOG_ENTRIES, MAX_MESSAGE_BYTES

_NO_NUL = "^[^\\u0000]*$"


def _check_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 (no lone surrogates)") from None
    return value


def _check_json(value: Any) -> Any:
    """Walk a JSON value: every key and string in it passes ``_check_text``."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict):
            for k, v in item.items():
                _check_text(k)
                stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)
    return value


def _check_message(value: str) -> str:
    if len(value) > MAX_MESSAGE_BYTES // 4 and len(value.encode("utf-8")) > MAX_MESSAGE_BYTES:
        raise ValueError(f"must be at most {MAX_MESSAGE_BYTES} bytes in UTF-8")
    return value


Text = Annotated[str, AfterValidator(_check_text), Field(json_schema_extra={"pattern": _NO_NUL})]
"""A string without NUL characters, valid UTF-8."""
JsonObject = Annotated[dict[str, Any], AfterValidator(_check_json)]
"""A JSON object whose keys and strings (at any depth) are ``Text``."""

LogLevelName = Literal["Debug", "Info", "Warning", "Error", "Critical"]
JobReport = Literal["running", "progress", "successful", "failed", "stopped", "interrupted"]
OfferedState = Literal["Starting", "Running", "Stopping", "Interrupting"]


class _RobotFrame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _GatewayFrame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# Robot -> gateway ---------------------------------------------------------------------------------


class Hello(_RobotFrame):
    """The first frame of every connection."""

    type: Literal["hello"] = "hello"
    seq: StrictInt = Field(0, ge=0, description="0: session frames are not sequenced")
    protocol: StrictInt = Field(description="the protocol version the robot speaks")
    robot_version: Text = Field(max_length=50)
    machine: Text = Field(max_length=255)
    capabilities: list[Annotated[Text, Field(max_length=50)]] = Field(default_factory=list, max_length=50)
    attended: StrictBool = False
    exit_after_job: StrictBool = False


class Heartbeat(_RobotFrame):
    type: Literal["heartbeat"] = "heartbeat"
    seq: StrictInt = Field(0, ge=0)
    job_id: uuid.UUID | None = None


class JobStatus(_RobotFrame):
    """A job attempt's progress or end, as the robot saw it (reliable: journaled, acked)."""

    type: Literal["job.status"] = "job.status"
    seq: StrictInt = Field(ge=1)
    job_id: uuid.UUID
    attempt: StrictInt = Field(ge=1)
    status: JobReport
    output: JsonObject | None = None
    error: Annotated[Text, Field(max_length=MAX_ERROR_CHARS)] | None = None
    at: AwareDatetime | None = None


class LogEntry(_RobotFrame):
    id: uuid.UUID = Field(
        description="made by the robot (or the script's SDK): a replayed line is stored once"
    )
    level: LogLevelName = "Info"
    message: Annotated[
        Text,
        AfterValidator(_check_message),
        Field(max_length=MAX_MESSAGE_BYTES, description=f"at most {MAX_MESSAGE_BYTES} bytes in UTF-8"),
    ]
    fields: JsonObject | None = None
    at: AwareDatetime
    job_id: uuid.UUID | None = None


class LogBatch(_RobotFrame):
    type: Literal["log"] = "log"
    seq: StrictInt = Field(ge=1)
    entries: list[LogEntry] = Field(min_length=1, max_length=MAX_LOG_ENTRIES)


class JobRequest(_RobotFrame):
    """Ask the orchestrator to run a published process on this robot."""

    type: Literal["job.request"] = "job.request"
    seq: StrictInt = Field(ge=1)
    request_id: uuid.UUID
    process_name: Text = Field(min_length=1, max_length=100)
    input_args: JsonObject = Field(default_factory=dict)


RobotFrame = Annotated[Hello | Heartbeat | JobStatus | LogBatch | JobRequest, Field(discriminator="type")]
ReliableFrame = JobStatus | LogBatch | JobRequest
"""Robot frames numbered from 1, journaled by the robot, applied once and acknowledged."""


# Gateway -> robot ---------------------------------------------------------------------------------


class Resume(_GatewayFrame):
    last_seq: StrictInt = Field(ge=0, description="the last robot seq the gateway applied")


class Welcome(_GatewayFrame):
    type: Literal["welcome"] = "welcome"
    seq: StrictInt = 0
    protocol: StrictInt
    robot_id: uuid.UUID
    robot_name: str
    connection_id: uuid.UUID
    heartbeat_interval_s: float
    resume: Resume | None = Field(
        description="main connection: where to resume the journal; null on a control connection"
    )
    capabilities: list[str] = Field(
        default_factory=list, description="the capabilities of the hello that this gateway grants"
    )
    server_time: AwareDatetime


class Ack(_GatewayFrame):
    type: Literal["ack"] = "ack"
    seq: StrictInt = Field(ge=1, description="every robot frame up to this seq is applied")


class Error(_GatewayFrame):
    type: Literal["error"] = "error"
    seq: StrictInt = Field(0, ge=0, description="the refused frame's seq, or 0")
    code: str = Field(description="bad_frame, not_allowed, unsupported_protocol, hello_timeout, rejected")
    detail: str
    field: str | None = Field(None, description="the offending field, dotted (entries.0.level)")


class JobStart(_GatewayFrame):
    """An offer: run (or resume) one job attempt."""

    type: Literal["job.start"] = "job.start"
    seq: StrictInt = 0
    id: uuid.UUID = Field(description="command id, the same for the same (job, attempt, kind)")
    job_id: uuid.UUID
    attempt: StrictInt = Field(ge=1)
    state: OfferedState
    process_id: uuid.UUID
    process_name: str
    version_id: uuid.UUID
    version: str
    sha256: str
    size: StrictInt = Field(ge=0)
    entry_point: str
    input_args: dict[str, Any]
    package_url: str


class JobStop(_GatewayFrame):
    """Soft stop: the script is asked to finish."""

    type: Literal["job.stop"] = "job.stop"
    seq: StrictInt = 0
    id: uuid.UUID
    job_id: uuid.UUID
    attempt: StrictInt = Field(ge=1)
    reason: str | None = Field(None, description='why, when not a person\'s request: "robot deactivated"')


class JobInterrupt(_GatewayFrame):
    """Hard stop: the script's process tree is killed."""

    type: Literal["job.interrupt"] = "job.interrupt"
    seq: StrictInt = 0
    id: uuid.UUID
    job_id: uuid.UUID
    attempt: StrictInt = Field(ge=1)
    reason: str | None = Field(
        None, description='why, when not a person\'s request: "job ended" (ended without the robot)'
    )


class JobRequested(_GatewayFrame):
    """The answer to a ``job.request``."""

    type: Literal["job.requested"] = "job.requested"
    seq: StrictInt = Field(ge=1, description="the job.request's seq")
    request_id: uuid.UUID
    job_id: uuid.UUID | None
    error: str | None = None


GatewayFrame = Annotated[
    Welcome | Ack | Error | JobStart | JobStop | JobInterrupt | JobRequested, Field(discriminator="type")
]

ROBOT_FRAME_TYPES = ("hello", "heartbeat", "job.status", "log", "job.request")
GATEWAY_FRAME_TYPES = ("welcome", "ack", "error", "job.start", "job.stop", "job.interrupt", "job.requested")


def command_id(job_id: uuid.UUID, attempt: int, kind: str) -> uuid.UUID:
    """The same command for the same job attempt always has the same id: robots drop repeats."""
    return uuid.uuid5(job_id, f"{attempt}:{kind}")
