"""Request and response bodies of robots.

A robot's key appears only in ``RobotWithKey`` (creation and rotation), never in a listing.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field, StrictBool

from rpa_api.kit.schemas import Description, In, Name, Out, Patch
from rpa_common.models.enums import RobotRole, RobotStatus


class RobotCreate(In):
    name: Name
    description: Description = ""
    role: RobotRole = RobotRole.ATTENDED
    folder_id: uuid.UUID | None = None
    is_active: StrictBool = True


class RobotUpdate(Patch):
    """Only the fields given change; status, heartbeat, machine and version are the robot's own."""

    not_null = ("name", "description", "role", "is_active")

    name: Name | None = None
    description: Description | None = None
    role: RobotRole | None = None
    folder_id: uuid.UUID | None = None
    is_active: StrictBool | None = None


class GroupRef(Out):
    id: uuid.UUID
    name: str


class RobotOut(Out):
    id: uuid.UUID
    name: str
    description: str
    role: RobotRole
    folder_id: uuid.UUID | None
    is_active: bool
    status: RobotStatus = Field(description="Read-only: reported through the gateway.")
    status_reason: str | None = Field(
        None, description="Why the robot is Unlicensed (no free seat, license expired); null otherwise."
    )
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
