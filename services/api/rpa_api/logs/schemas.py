"""Log lines as the API shows them, and the cursor page they come in."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rpa_common.models.enums import LogLevel


class LogLine(BaseModel):
    """One line a robot sent (the script's ``sdk.log``, or its output streams)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID = Field(description="made by the robot: a replayed line is stored once")
    at: datetime = Field(description="when the robot logged it (the robot's clock)")
    received_at: datetime = Field(description="when the gateway stored it")
    level: str = Field(description="Debug, Info, Warning, Error or Critical")
    message: str
    fields: dict[str, Any] | None
    robot_id: uuid.UUID | None
    job_id: uuid.UUID | None
    process_id: uuid.UUID | None
    process_version_id: uuid.UUID | None
    task_id: uuid.UUID | None

    @field_validator("level", mode="before")
    @classmethod
    def _level_name(cls, value: Any) -> str:
        return LogLevel(value).name.capitalize() if not isinstance(value, str) else value


class LogPage(BaseModel):
    """One page of lines, ordered by (``at``, ``id``); no total (logs grow without bound)."""

    items: list[LogLine]
    next_cursor: str | None = Field(
        description="pass as ``cursor`` for the next page; null when this page is the last one for now "
        "(new lines may come later: the same cursor then finds them)"
    )
    limit: int
