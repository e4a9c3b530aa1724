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
    model_validator,
)

from rpa_protocol.codes import (
    MAX_DESCRIPTION_CHARS,
    MAX_ERROR_CHARS,
    MAX_LOCK_S,
    MAX_LOG_ENTRIES,
    MAX_MESSAGE_BYTES,
    MAX_NOTE_CHARS,
    MAX_QUEUE_NAME_CHARS,
    MAX_RESOURCE_NAME_CHARS,
    MAX_TAG_CHARS,
    MAX_TAGS,
    MAX_TASK_NAME_CHARS,
    MAX_TASKS_PER_ADD,
    MAX_TEXT_VALUE_BYTES,
    MIN_LOCK_S,
)

_NO_NUL = "^[^\\u0000]*$"


def _check_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (\\u0000)")
    if value.isascii():  # the common case, without encoding a copy: ASCII holds no surrogate
        return value
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
    """A log line's text: ``Text`` and at most ``MAX_MESSAGE_BYTES`` in UTF-8, in one call (it runs
    for every line: one Python call instead of three)."""
    _check_text(value)
    if len(value) > MAX_MESSAGE_BYTES // 4 and len(value.encode("utf-8")) > MAX_MESSAGE_BYTES:
        raise ValueError(f"must be at most {MAX_MESSAGE_BYTES} bytes in UTF-8")
    return value


def _check_value(value: str) -> str:
    if len(value) > MAX_TEXT_VALUE_BYTES // 4 and len(value.encode("utf-8")) > MAX_TEXT_VALUE_BYTES:
        raise ValueError(f"must be at most {MAX_TEXT_VALUE_BYTES} bytes in UTF-8")
    return value


Text = Annotated[str, AfterValidator(_check_text), Field(json_schema_extra={"pattern": _NO_NUL})]
"""A string without NUL characters, valid UTF-8."""
JsonObject = Annotated[dict[str, Any], AfterValidator(_check_json)]
"""A JSON object whose keys and strings (at any depth) are ``Text``."""

LogLevelName = Literal["Debug", "Info", "Warning", "Error", "Critical"]
JobReport = Literal["running", "progress", "successful", "failed", "stopped", "interrupted"]
TaskPriorityName = Literal["low", "normal", "high"]
TaskOutcome = Literal["successful", "failed_application", "failed_business"]
ResourceKindName = Literal["text", "credentials", "calendar"]
QueueName = Annotated[Text, Field(min_length=1, max_length=MAX_QUEUE_NAME_CHARS)]
ResourceName = Annotated[Text, Field(min_length=1, max_length=MAX_RESOURCE_NAME_CHARS)]
LockSeconds = Annotated[
    StrictInt,
    Field(
        ge=MIN_LOCK_S,
        le=MAX_LOCK_S,
        description="how long the lock lasts from now; absent: the orchestrator's default (RPA_TASK_LOCK_S)",
    ),
]
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
        str,
        AfterValidator(_check_message),
        # No ``max_length``: the byte limit is the stricter one (a character is 1 to 4 bytes).
        Field(
            description=f"at most {MAX_MESSAGE_BYTES} bytes in UTF-8",
            json_schema_extra={"maxLength": MAX_MESSAGE_BYTES, "pattern": _NO_NUL},
        ),
    ]
    fields: JsonObject | None = None
    at: AwareDatetime
    job_id: uuid.UUID | None = None


class LogBatch(_RobotFrame):
    type: Literal["log"] = "log"
    seq: StrictInt = Field(ge=1)
    entries: list[LogEntry] = Field(min_length=1, max_length=MAX_LOG_ENTRIES)


class JobRequest(_RobotFrame):
    """Ask the orchestrator to run a published process on this robot, or to fire a robot command
    trigger (which decides the process, the target, the priority and the arguments)."""

    type: Literal["job.request"] = "job.request"
    seq: StrictInt = Field(ge=1)
    request_id: uuid.UUID
    process_name: Text | None = Field(
        None, min_length=1, max_length=100, description="give exactly one of process_name and trigger_name"
    )
    trigger_name: Text | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="a robot command trigger of the robot's account; its jobs run where it says",
    )
    input_args: JsonObject = Field(default_factory=dict, description="merged over a trigger's own arguments")

    @model_validator(mode="after")
    def _one_target(self) -> JobRequest:
        if (self.process_name is None) == (self.trigger_name is None):
            raise ValueError("give exactly one of process_name and trigger_name")
        return self


# Tasks and resources (robot -> gateway). All carry ``request_id`` and are answered by a reply
# frame with the same ``request_id`` and ``seq``. Reliable ones (journaled, acknowledged, applied
# once under the ``inbound_seq`` guard): task.add, task.progress, task.finish, resource.set.
# Requests (numbered from the same counter, not journaled, not acknowledged, not compared with
# ``inbound_seq``): task.take, task.renew, resource.get, credential.get.


class TaskItem(_RobotFrame):
    """One task of a ``task.add``."""

    name: Text = Field(min_length=1, max_length=MAX_TASK_NAME_CHARS)
    parameters: JsonObject = Field(default_factory=dict)
    priority: TaskPriorityName = "normal"
    tags: list[Annotated[Text, Field(min_length=1, max_length=MAX_TAG_CHARS)]] = Field(
        default_factory=list, max_length=MAX_TAGS
    )
    deadline: AwareDatetime | None = None
    delay_until: AwareDatetime | None = Field(None, description="Postponed until then")
    description: Text = Field("", max_length=MAX_DESCRIPTION_CHARS)


class TaskAdd(_RobotFrame):
    """Add tasks to a queue (reliable: journaled, acked); answered by ``task.added``."""

    type: Literal["task.add"] = "task.add"
    seq: StrictInt = Field(ge=1)
    request_id: uuid.UUID
    queue: QueueName
    tasks: list[TaskItem] = Field(min_length=1, max_length=MAX_TASKS_PER_ADD)
    job_id: uuid.UUID | None = Field(None, description="the job of the script that adds them, if any")


class TaskTake(_RobotFrame):
    """Take the next task of a queue (a request); answered by ``task.taken``."""

    type: Literal["task.take"] = "task.take"
    seq: StrictInt = Field(ge=1)
    request_id: uuid.UUID
    queue: QueueName
    job_id: uuid.UUID | None = Field(None, description="the job of the script that takes it, if any")
    lock_s: LockSeconds | None = None


class TaskRenew(_RobotFrame):
    """Extend the lock of a task this robot holds (a request); answered by ``task.renewed``."""

    type: Literal["task.renew"] = "task.renew"
    seq: StrictInt = Field(ge=1)
    request_id: uuid.UUID
    task_id: uuid.UUID
    lock_token: StrictInt = Field(ge=1, description="the fencing token from task.taken")
    lock_s: LockSeconds | None = None


class TaskProgress(_RobotFrame):
    """A progress note on a task this robot holds (reliable); answered by ``task.progressed``."""

    type: Literal["task.progress"] = "task.progress"
    seq: StrictInt = Field(ge=1)
    request_id: uuid.UUID
    task_id: uuid.UUID
    lock_token: StrictInt = Field(ge=1)
    note: Text = Field(min_length=1, max_length=MAX_NOTE_CHARS)


class TaskFinish(_RobotFrame):
    """Finish a task this robot holds (reliable: journaled, acked); answered by ``task.finished``."""

    type: Literal["task.finish"] = "task.finish"
    seq: StrictInt = Field(ge=1)
    request_id: uuid.UUID
    task_id: uuid.UUID
    lock_token: StrictInt = Field(ge=1)
    outcome: TaskOutcome
    reason: Annotated[Text, Field(max_length=MAX_ERROR_CHARS)] | None = None
    output: JsonObject | None = None


class ResourceGet(_RobotFrame):
    """Read a resource as this robot sees it (robot > group > all); answered by ``resource.value``."""

    type: Literal["resource.get"] = "resource.get"
    seq: StrictInt = Field(ge=1)
    request_id: uuid.UUID
    name: ResourceName
    watch: StrictBool = Field(False, description="push resource.changed on this connection when it changes")


class ResourceSet(_RobotFrame):
    """Set a Text resource's value in this robot's scope (reliable); answered by ``resource.value``."""

    type: Literal["resource.set"] = "resource.set"
    seq: StrictInt = Field(ge=1)
    request_id: uuid.UUID
    name: ResourceName
    value: Annotated[
        Text,
        AfterValidator(_check_value),
        Field(description=f"at most {MAX_TEXT_VALUE_BYTES} bytes in UTF-8"),
    ]


class CredentialGet(_RobotFrame):
    """Read a Credentials resource with its password (audited); answered by ``credential.value``."""

    type: Literal["credential.get"] = "credential.get"
    seq: StrictInt = Field(ge=1)
    request_id: uuid.UUID
    name: ResourceName


AnyRobotFrame = (
    Hello
    | Heartbeat
    | JobStatus
    | LogBatch
    | JobRequest
    | TaskAdd
    | TaskTake
    | TaskRenew
    | TaskProgress
    | TaskFinish
    | ResourceGet
    | ResourceSet
    | CredentialGet
)
"""Every frame a robot may send (the type ``parse_robot_frame`` returns)."""
RobotFrame = Annotated[AnyRobotFrame, Field(discriminator="type")]
ReliableFrame = JobStatus | LogBatch | JobRequest | TaskAdd | TaskProgress | TaskFinish | ResourceSet
"""Robot frames numbered from 1, journaled by the robot, applied once and acknowledged."""
RequestFrame = TaskTake | TaskRenew | ResourceGet | CredentialGet
"""Robot frames answered by a reply but neither journaled nor acknowledged (docs 2.12)."""


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
    unlicensed: str | None = Field(
        None,
        description="why the robot is Unlicensed and gets no work (no free seat, license expired); "
        "null when it is licensed",
    )


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


class ReplyError(_GatewayFrame):
    """Why a well-formed request was refused; nothing was changed."""

    code: str = Field(
        description=(
            "queue_not_found, task_not_found, duplicate_name, too_many, invalid, stale_token, "
            "not_in_progress, resource_not_found, wrong_kind, not_allowed (no value for this robot's "
            "scope), unreadable (a stored password does not decrypt: an administrator's problem)"
        )
    )
    detail: str
    field: str | None = Field(None, description="the offending field of the request, dotted (tasks.3.name)")


class _Reply(_GatewayFrame):
    seq: StrictInt = Field(ge=1, description="the request's seq")
    request_id: uuid.UUID
    error: ReplyError | None = None
    duplicate: bool = Field(
        False,
        description=(
            "a reliable frame applied before (a replay after a lost ack): its effect was kept, its "
            "first answer is not repeated"
        ),
    )


class TaskAdded(_Reply):
    type: Literal["task.added"] = "task.added"
    task_ids: list[uuid.UUID] = Field(default_factory=list, description="in the order of the request's tasks")


class TakenTask(_GatewayFrame):
    id: uuid.UUID
    queue: str
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    priority: TaskPriorityName
    tags: list[str] = Field(default_factory=list)
    deadline: AwareDatetime | None = None
    retry_number: StrictInt = 0
    lock_token: StrictInt = Field(ge=1, description="the fencing token: renew, progress and finish send it")
    lock_expires_at: AwareDatetime


class TaskTaken(_Reply):
    type: Literal["task.taken"] = "task.taken"
    task: TakenTask | None = Field(None, description="null: no task is waiting (or an error)")


class TaskRenewed(_Reply):
    type: Literal["task.renewed"] = "task.renewed"
    lock_expires_at: AwareDatetime | None = None


class TaskProgressed(_Reply):
    type: Literal["task.progressed"] = "task.progressed"


class TaskFinished(_Reply):
    type: Literal["task.finished"] = "task.finished"
    retry_task_id: uuid.UUID | None = Field(None, description="the retry the queue's settings created")


class _ResourceFields(_GatewayFrame):
    name: str
    kind: ResourceKindName | None = Field(None, description="null with an error")
    text: str | None = Field(None, description="Text resources")
    login: str | None = Field(None, description="Credentials resources (never the password here)")
    expires_at: AwareDatetime | None = None
    expired: bool = False
    calendar: dict[str, Any] | None = Field(
        None,
        description='Calendar resources: {"time_zone", "weekend_days", "days": [{"day", "working", "note"}]}',
    )


class ResourceValue(_ResourceFields, _Reply):
    """The answer to ``resource.get`` and ``resource.set``."""

    type: Literal["resource.value"] = "resource.value"


class CredentialValue(_Reply):
    """The answer to ``credential.get``: the only frame that carries a password."""

    type: Literal["credential.value"] = "credential.value"
    name: str
    login: str | None = None
    password: str | None = Field(None, repr=False, description="never logged, never stored by the robot")
    expires_at: AwareDatetime | None = None
    expired: bool = False


class ResourceChanged(_ResourceFields):
    """Push: a watched resource changed (or is no longer visible to this robot: ``error``)."""

    type: Literal["resource.changed"] = "resource.changed"
    seq: StrictInt = 0
    error: ReplyError | None = None


GatewayFrame = Annotated[
    Welcome
    | Ack
    | Error
    | JobStart
    | JobStop
    | JobInterrupt
    | JobRequested
    | TaskAdded
    | TaskTaken
    | TaskRenewed
    | TaskProgressed
    | TaskFinished
    | ResourceValue
    | CredentialValue
    | ResourceChanged,
    Field(discriminator="type"),
]

ROBOT_FRAME_TYPES = (
    "hello",
    "heartbeat",
    "job.status",
    "log",
    "job.request",
    "task.add",
    "task.take",
    "task.renew",
    "task.progress",
    "task.finish",
    "resource.get",
    "resource.set",
    "credential.get",
)
GATEWAY_FRAME_TYPES = (
    "welcome",
    "ack",
    "error",
    "job.start",
    "job.stop",
    "job.interrupt",
    "job.requested",
    "task.added",
    "task.taken",
    "task.renewed",
    "task.progressed",
    "task.finished",
    "resource.value",
    "credential.value",
    "resource.changed",
)


def command_id(job_id: uuid.UUID, attempt: int, kind: str) -> uuid.UUID:
    """The same command for the same job attempt always has the same id: robots drop repeats."""
    return uuid.uuid5(job_id, f"{attempt}:{kind}")
