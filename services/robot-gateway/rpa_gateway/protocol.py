"""Robot protocol v1: the frames robots and the gateway exchange (docs/robot-protocol.md).

Every frame is one JSON text frame ``{"type": ..., "seq": n, ...}``. Robot frames are validated
with the pydantic models below; anything that does not fit (not JSON, unknown type, wrong or
missing fields) becomes a ``BadFrame`` naming the problem, and changes nothing.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
)

PROTOCOL_VERSION = 1
SUPPORTED_PROTOCOLS = frozenset({1})

# WebSocket close codes the gateway uses (4xxx: application codes, see the protocol document).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008  # too many bad frames, or hello missing
CLOSE_RESTART = 1012  # the gateway is shutting down: reconnect (to another replica)
CLOSE_UNAUTHORIZED = 4401  # key rotated / robot deleted while connected
CLOSE_FORBIDDEN = 4403  # robot deactivated while connected
CLOSE_REPLACED = 4409  # another connection of the same robot took over
CLOSE_UNSUPPORTED = 4426  # protocol version not supported

MAX_LOG_ENTRIES = 1000
MAX_MESSAGE_CHARS = 64 * 1024

LogLevelName = Literal["Debug", "Info", "Warning", "Error", "Critical"]
JobReport = Literal["running", "progress", "successful", "failed", "stopped", "interrupted"]


class _Frame(BaseModel):
    # Unknown fields are refused: a typo in a field name is a bug the robot should hear about.
    model_config = ConfigDict(extra="forbid", strict=False)


class Hello(_Frame):
    type: Literal["hello"]
    seq: StrictInt = Field(0, ge=0)
    protocol: StrictInt
    robot_version: str = Field(max_length=50)
    machine: str = Field(max_length=255)
    capabilities: list[Annotated[str, Field(max_length=50)]] = Field(default_factory=list, max_length=50)
    attended: StrictBool = False
    exit_after_job: StrictBool = False


class Heartbeat(_Frame):
    type: Literal["heartbeat"]
    seq: StrictInt = Field(0, ge=0)
    job_id: uuid.UUID | None = None


class JobStatus(_Frame):
    type: Literal["job.status"]
    seq: StrictInt = Field(ge=1)
    job_id: uuid.UUID
    attempt: StrictInt = Field(ge=1)
    status: JobReport
    output: dict[str, Any] | None = None
    error: str | None = Field(None, max_length=10_000)
    at: AwareDatetime | None = None


class LogEntry(_Frame):
    id: uuid.UUID
    level: LogLevelName = "Info"
    message: str = Field(max_length=MAX_MESSAGE_CHARS)
    fields: dict[str, Any] | None = None
    at: AwareDatetime
    job_id: uuid.UUID | None = None


class LogBatch(_Frame):
    type: Literal["log"]
    seq: StrictInt = Field(ge=1)
    entries: list[LogEntry] = Field(min_length=1, max_length=MAX_LOG_ENTRIES)


class JobRequest(_Frame):
    type: Literal["job.request"]
    seq: StrictInt = Field(ge=1)
    request_id: uuid.UUID
    process_name: str = Field(min_length=1, max_length=100)
    input_args: dict[str, Any] = Field(default_factory=dict)


InboundFrame = Annotated[Hello | Heartbeat | JobStatus | LogBatch | JobRequest, Field(discriminator="type")]
_inbound: TypeAdapter[Hello | Heartbeat | JobStatus | LogBatch | JobRequest] = TypeAdapter(InboundFrame)
INBOUND_TYPES = ("hello", "heartbeat", "job.status", "log", "job.request")
RELIABLE_TYPES = frozenset({"job.status", "log", "job.request"})


class BadFrame(Exception):
    """A frame the gateway cannot use; ``detail`` and ``field`` go back in an ``error`` frame."""

    def __init__(self, detail: str, *, field: str | None = None, ref_seq: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.ref_seq = ref_seq


def parse_frame(raw: str | bytes | None) -> Hello | Heartbeat | JobStatus | LogBatch | JobRequest:
    """The validated frame, or ``BadFrame`` saying what is wrong with it."""
    if raw is None:
        raise BadFrame("empty frame")
    if isinstance(raw, bytes):
        raise BadFrame("binary frames are not part of the protocol; send JSON text frames")
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadFrame(f"not JSON: {exc.msg} at position {exc.pos}") from None
    except (ValueError, RecursionError):
        raise BadFrame("not JSON") from None
    if not isinstance(doc, dict):
        raise BadFrame("a frame is a JSON object")
    ref_seq = doc.get("seq") if isinstance(doc.get("seq"), int) else None
    kind = doc.get("type")
    if not isinstance(kind, str):
        raise BadFrame("missing or non-string 'type'", field="type", ref_seq=ref_seq)
    if kind not in INBOUND_TYPES:
        raise BadFrame(f"unknown frame type {kind!r}", field="type", ref_seq=ref_seq)
    try:
        return _inbound.validate_python(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ()) if p != kind]
        where = ".".join(loc) or "frame"
        raise BadFrame(f"{where}: {err.get('msg', 'invalid')}", field=where, ref_seq=ref_seq) from None


# Gateway -> robot ---------------------------------------------------------------------------------


def command_id(job_id: uuid.UUID, attempt: int, kind: str) -> uuid.UUID:
    """The same command for the same job attempt always has the same id: robots dedupe on it."""
    return uuid.uuid5(job_id, f"{attempt}:{kind}")


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
