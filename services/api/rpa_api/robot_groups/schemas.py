"""Request and response bodies of robot groups (a robot may belong to several)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field

from rpa_api.kit.schemas import Description, In, Name, Out, Patch
from rpa_common.models.enums import RobotRole, RobotStatus


class RobotGroupCreate(In):
    name: Name
    description: Description = ""
    folder_id: uuid.UUID | None = None
    robot_ids: list[uuid.UUID] = Field(default_factory=list, max_length=1000)


class RobotGroupUpdate(Patch):
    not_null = ("name", "description")

    name: Name | None = None
    description: Description | None = None
    folder_id: uuid.UUID | None = None


class RobotGroupMembers(In):
    robot_ids: list[uuid.UUID] = Field(max_length=1000)


class RobotRef(Out):
    id: uuid.UUID
    name: str
    role: RobotRole
    status: RobotStatus
    is_active: bool


class RobotGroupOut(Out):
    id: uuid.UUID
    name: str
    description: str
    folder_id: uuid.UUID | None
    robot_count: int = 0
    created_at: datetime
    updated_at: datetime


class RobotGroupDetail(RobotGroupOut):
    robots: list[RobotRef]
