"""Request and response bodies of robots, robot groups, terminal servers and unattended accounts.

Secrets never appear in a response model: a robot key only in ``RobotWithKey`` (creation and
rotation), an unattended account's password never (``has_password`` says whether one is set).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints

from rpa_common.models.enums import RobotRole, RobotStatus

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Description = Annotated[str, StringConstraints(max_length=1000)]


class _In(BaseModel):
    """Request bodies reject unknown fields: a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# Robots ------------------------------------------------------------------------------------------


class RobotCreate(_In):
    name: Name
    description: Description = ""
    role: RobotRole = RobotRole.ATTENDED
    folder_id: uuid.UUID | None = None
    is_active: bool = True


class RobotUpdate(_In):
    """Only the fields given change; status, heartbeat, machine and version are the robot's own."""

    name: Name | None = None
    description: Description | None = None
    role: RobotRole | None = None
    folder_id: uuid.UUID | None = None
    is_active: bool | None = None


class GroupRef(_Out):
    id: uuid.UUID
    name: str


class RobotOut(_Out):
    id: uuid.UUID
    name: str
    description: str
    role: RobotRole
    folder_id: uuid.UUID | None
    is_active: bool
    status: RobotStatus = Field(description="Read-only: reported through the gateway.")
    last_heartbeat_at: datetime | None = Field(description="Read-only.")
    machine: str | None = Field(description="Read-only: the machine the robot last connected from.")
    version: str | None = Field(description="Read-only: the robot runtime's version.")
    current_job_id: uuid.UUID | None = Field(description="Read-only: the job the robot is busy with.")
    key_prefix: str = Field(description="Public part of the robot's key, to tell keys apart.")
    created_at: datetime
    updated_at: datetime


class RobotDetail(RobotOut):
    groups: list[GroupRef]


class RobotWithKey(RobotDetail):
    key: str = Field(description="The robot's key. Shown only this once: store it now.")


# Robot groups ------------------------------------------------------------------------------------


class RobotGroupCreate(_In):
    name: Name
    description: Description = ""
    folder_id: uuid.UUID | None = None
    robot_ids: list[uuid.UUID] = Field(default_factory=list, max_length=1000)


class RobotGroupUpdate(_In):
    name: Name | None = None
    description: Description | None = None
    folder_id: uuid.UUID | None = None


class RobotGroupMembers(_In):
    robot_ids: list[uuid.UUID] = Field(max_length=1000)


class RobotRef(_Out):
    id: uuid.UUID
    name: str
    role: RobotRole
    status: RobotStatus
    is_active: bool


class RobotGroupOut(_Out):
    id: uuid.UUID
    name: str
    description: str
    folder_id: uuid.UUID | None
    robot_count: int = 0
    created_at: datetime
    updated_at: datetime


class RobotGroupDetail(RobotGroupOut):
    robots: list[RobotRef]


# Terminal servers and unattended accounts --------------------------------------------------------


class TerminalServerCreate(_In):
    name: Name
    hostname: Annotated[str, StringConstraints(strip_whitespace=True, max_length=255)] = ""
    description: Description = ""
    coordinator_id: uuid.UUID | None = Field(None, description="A robot of role coordinator.")
    max_sessions: int = Field(10, ge=1, le=10_000)


class TerminalServerUpdate(_In):
    name: Name | None = None
    hostname: Annotated[str, StringConstraints(strip_whitespace=True, max_length=255)] | None = None
    description: Description | None = None
    coordinator_id: uuid.UUID | None = None
    max_sessions: int | None = Field(None, ge=1, le=10_000)


class UnattendedAccountCreate(_In):
    login: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
    domain: Annotated[str, StringConstraints(strip_whitespace=True, max_length=255)] | None = None
    password: SecretStr | None = Field(
        None, description="Write-only: encrypted at rest, never returned.", max_length=1024
    )
    robot_id: uuid.UUID | None = Field(None, description="An unattended robot; at most one account each.")


class UnattendedAccountUpdate(_In):
    login: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)] | None = (
        None
    )
    domain: Annotated[str, StringConstraints(strip_whitespace=True, max_length=255)] | None = None
    password: SecretStr | None = Field(
        None, description="Write-only; null removes the stored password.", max_length=1024
    )
    robot_id: uuid.UUID | None = None


class UnattendedAccountOut(_Out):
    id: uuid.UUID
    terminal_server_id: uuid.UUID
    login: str
    domain: str | None
    robot_id: uuid.UUID | None
    has_password: bool
    created_at: datetime
    updated_at: datetime


class TerminalServerOut(_Out):
    id: uuid.UUID
    name: str
    hostname: str
    description: str
    coordinator_id: uuid.UUID | None
    max_sessions: int
    created_at: datetime
    updated_at: datetime


class TerminalServerDetail(TerminalServerOut):
    accounts: list[UnattendedAccountOut]
