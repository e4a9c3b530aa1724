"""Bodies of accounts (tenants) and of the first administrator of a new account."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from rpa_api.users.schemas import DisplayName, Email, Password, Username

AccountName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[\w.-]+$")
]
Description = Annotated[str, StringConstraints(max_length=1000)]
RetentionDays = Annotated[int, Field(ge=1, le=3650)]


class _In(BaseModel):
    """Request bodies reject unknown fields: a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid")


class AccountUpdate(_In):
    """Only the fields given change."""

    description: Description | None = None
    message_retention_days: RetentionDays | None = Field(
        None, description="Robot messages (log lines) older than this many days are removed (default 30)"
    )
    screenshot_retention_days: RetentionDays | None = Field(
        None, description="Screenshots older than this many days are removed, image included (default 30)"
    )


class FirstAdmin(_In):
    username: Username
    password: Password
    display_name: DisplayName = "Administrator"
    email: Email | None = None


class AccountCreate(_In):
    name: AccountName
    description: Description = ""
    admin: FirstAdmin


class AccountOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str
    is_active: bool
    message_retention_days: int
    screenshot_retention_days: int
    created_at: datetime
    updated_at: datetime


class AdminRef(BaseModel):
    id: uuid.UUID
    username: str


class AccountCreated(AccountOut):
    admin: AdminRef
