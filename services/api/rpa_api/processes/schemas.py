"""Request and response bodies of processes and their versions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from rpa_api.kit.schemas import Patch


class ProcessUpdate(Patch):
    """Only the fields given change. The name is the manifest's and stays."""

    not_null = ("description",)

    description: Annotated[str, StringConstraints(max_length=1000)] | None = None
    folder_id: uuid.UUID | None = None


class ProcessOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str
    folder_id: uuid.UUID | None
    current_version_id: uuid.UUID | None
    current_version: str | None = Field(description="Label of the current version.")
    min_runtime_version: str | None = Field(description="Of the current version.")
    created_at: datetime
    updated_at: datetime


class VersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    process_id: uuid.UUID
    version: str
    notes: str
    entry_point: str
    min_runtime_version: str | None
    default_input: dict[str, Any] | None
    sha256: str = Field(description="Hex SHA-256 of the package bytes.")
    size: int = Field(description="Package size in bytes.")
    published_by: uuid.UUID | None
    published_at: datetime
    is_current: bool


class PublishResult(BaseModel):
    process: ProcessOut
    version: VersionOut
    process_created: bool = Field(description="True when this publication created the process.")
