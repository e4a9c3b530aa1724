"""Response bodies of the screenshots API."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class ScreenshotOut(BaseModel):
    """A screenshot's metadata; its image is at ``GET /screenshots/{id}/content``."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    job_id: uuid.UUID | None
    robot_id: uuid.UUID | None
    message_id: uuid.UUID | None = Field(description="The log line it is attached to, if any")
    content_type: str = Field(description="image/png or image/jpeg (read from the bytes)")
    size: int = Field(description="Bytes")
    width: int | None
    height: int | None
    at: datetime = Field(description="When the robot took it")
    received_at: datetime
