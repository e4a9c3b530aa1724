"""Pydantic models of every NATS message; a handler's type hint is its schema."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from rpa_common.models.enums import JobState, RobotStatus, SessionState, ShellMode


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, data: bytes) -> Any:
        return cls.model_validate_json(data)


class JobCreated(Message):
    account_id: uuid.UUID
    job_id: uuid.UUID
    robot_id: uuid.UUID | None = None
    robot_group_id: uuid.UUID | None = None
    created_at: datetime


class JobStateChanged(Message):
    account_id: uuid.UUID
    job_id: uuid.UUID
    process_id: uuid.UUID
    robot_id: uuid.UUID | None = None
    from_state: JobState | None
    to_state: JobState
    attempt: int
    at: datetime
    deadline_at: datetime | None = None
    """The earliest stop/interrupt deadline this transition set (Starting -> Running): schedulers
    time their deadline timer by it instead of waiting for a sweep."""


class JobControl(Message):
    account_id: uuid.UUID
    job_id: uuid.UUID
    robot_id: uuid.UUID | None
    attempt: int
    command: Literal["stop", "interrupt"]


class RobotStatusChanged(Message):
    account_id: uuid.UUID
    robot_id: uuid.UUID
    status: RobotStatus
    at: datetime


class RobotChanged(Message):
    account_id: uuid.UUID
    robot_id: uuid.UUID
    change: Literal["deactivated", "deleted", "key_rotated", "activated"]


class AuthChanged(Message):
    account_id: uuid.UUID


class ResourceChanged(Message):
    """A resource or one of its values changed. No value and no secret travels here: a gateway
    re-resolves the resource from the database for each robot watching it."""

    account_id: uuid.UUID
    resource_id: uuid.UUID
    name: str
    """The resource's name now (robots watch by name)."""
    old_name: str | None = None
    """The name before a rename, so watchers of the old name learn it is gone."""
    change: Literal["created", "updated", "deleted"] = "updated"


class TriggerChanged(Message):
    """Published on ``TRIGGER_CHANGED`` after the commit that created, changed or deleted a trigger.

    Every scheduler replica subscribes (no queue group) and reloads that trigger at once; they also
    re-read all triggers periodically, so a lost message only delays the change.
    """

    account_id: uuid.UUID
    trigger_id: uuid.UUID
    change: Literal["created", "updated", "deleted"]


class JobOffer(Message):
    """Everything a robot needs to start (or resume) one job attempt."""

    job_id: uuid.UUID
    attempt: int
    state: JobState
    process_id: uuid.UUID
    process_name: str
    version_id: uuid.UUID
    version: str
    sha256: str
    size: int
    entry_point: str
    input_args: dict[str, Any]
    stop_after_s: int | None = None
    interrupt_after_s: int | None = None


class GatewayCommand(Message):
    """A command for the gateway replica holding ``robot_id``'s connection.

    An ``offer`` from the dispatcher carries the offer itself, so the gateway sends ``job.start``
    without reading the database; without it the gateway reads the job.
    """

    robot_id: uuid.UUID
    kind: Literal["offer", "stop", "interrupt", "disconnect"]
    job_id: uuid.UUID | None = None
    attempt: int | None = None
    offer: JobOffer | None = None


class RdpTarget(Message):
    """Where and how the ``rdp`` driver connects: the terminal server's settings (no secret)."""

    host: str
    port: int = 3389
    cert_fingerprint: str | None = None
    """FreeRDP's ``/cert:fingerprint:`` value, e.g. ``sha256:AB:CD:...``; pins the server's certificate."""
    cert_ignore: bool = False
    """The explicit opt-out for test servers: any certificate is accepted."""
    shell_mode: ShellMode = ShellMode.COMMAND
    shell_command: str | None = None
    """The robot's command for ``shell_mode=command``; None: the coordinator's default."""


class OpenSession(Message):
    """Ask a coordinator to open a session.

    The account's password and the session's robot key travel only sealed (``sealed``: a
    ``rpa_common.sealing`` box for the coordinator's public key, bound to the session id, holding
    ``{"password": ..., "robot_key": ...}``): NATS, its monitoring and logs never see them.

    Sent again (the same session, the same key) while the coordinator has not answered: a
    coordinator that knows the session answers with its state instead of opening another."""

    kind: Literal["open_session"] = "open_session"
    session_id: uuid.UUID
    account_id: uuid.UUID
    unattended_account_id: uuid.UUID
    robot_id: uuid.UUID
    job_id: uuid.UUID | None
    login: str
    domain: str | None = None
    sealed: str = Field(repr=False)
    gateway_url: str | None = None
    server: RdpTarget | None = None


def session_seal_context(session_id: uuid.UUID) -> str:
    """What an ``OpenSession``'s box is bound to: a box copied into another session does not open."""
    return f"open_session:{session_id}"


class CloseSession(Message):
    """Ask a coordinator to close a session (the job ended, or its robot never connected)."""

    kind: Literal["close_session"] = "close_session"
    session_id: uuid.UUID
    reason: str | None = None


CoordinatorCommand = Annotated[OpenSession | CloseSession, Field(discriminator="kind")]
"""What ``coordinator_inbox`` carries: one model per ``kind``."""

_coordinator_command: TypeAdapter[OpenSession | CloseSession] = TypeAdapter(CoordinatorCommand)


def decode_coordinator_command(data: bytes) -> OpenSession | CloseSession:
    """The command of a ``coordinator_inbox`` message, by its ``kind``; ``ValueError`` if it is none."""
    return _coordinator_command.validate_json(data)


class SessionStateReport(Message):
    session_id: uuid.UUID
    account_id: uuid.UUID
    state: SessionState
    reason: str | None = None
    at: datetime
