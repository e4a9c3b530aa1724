"""Protocol v1 over plain HTTP, beside the WebSocket: what a robot uploads (docs/robot-protocol.md).

Uploads are authenticated like package downloads: ``Authorization: Bearer <robot key>``.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict

SCREENSHOTS_PATH = "/robot/v1/screenshots"
"""``POST``, multipart/form-data: ``file`` (PNG or JPEG bytes), ``job_id``, ``id`` (optional: the
screenshot's id, made by the robot so a retried upload is stored once), ``message_id`` (optional:
the log line it belongs to), ``at`` (optional: when it was taken, ISO 8601 with a zone)."""

SCREENSHOT_FORM_FIELDS = ("file", "job_id", "id", "message_id", "at")


class ScreenshotStored(BaseModel):
    """The gateway's answer to an upload (201 stored, 200 already stored under this id)."""

    model_config = ConfigDict(extra="ignore")

    id: uuid.UUID
    job_id: uuid.UUID
    message_id: uuid.UUID | None = None
    content_type: str
    size: int
    width: int | None = None
    height: int | None = None
    at: datetime
