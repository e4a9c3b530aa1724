"""Bodies of users. A password goes in (``SecretStr``, never echoed) and never comes out."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, StrictBool, StringConstraints

MIN_PASSWORD = 8
MAX_PASSWORD = 1024


def _password_length(value: SecretStr) -> SecretStr:
    n = len(value.get_secret_value())
    if n < MIN_PASSWORD:
        raise ValueError(f"must be at least {MIN_PASSWORD} characters")
    if n > MAX_PASSWORD:
        raise ValueError(f"must be at most {MAX_PASSWORD} characters")
    return value


# The bounds are checked on the secret's text and stated in the schema, so clients see them.
Password = Annotated[
    SecretStr,
    AfterValidator(_password_length),
    Field(json_schema_extra={"minLength": MIN_PASSWORD, "maxLength": MAX_PASSWORD}),
]
Username = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=150, pattern=r"^[\w.@+-]+$")
]
DisplayName = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]
Email = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
]
RoleIds = Annotated[list[uuid.UUID], Field(max_length=100)]


class _In(BaseModel):
    """Request bodies reject unknown fields: a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid")


class UserCreate(_In):
    username: Username
    password: Password
    display_name: DisplayName = ""
    email: Email | None = None
    is_active: StrictBool = True
    role_ids: RoleIds = []


class UserUpdate(_In):
    """Only the fields given change."""

    username: Username | None = None
    display_name: DisplayName | None = None
    email: Email | None = None
    is_active: StrictBool | None = None
    role_ids: RoleIds | None = None


class UserRoles(_In):
    role_ids: RoleIds


class PasswordReset(_In):
    password: Password


class RoleRef(BaseModel):
    id: uuid.UUID
    name: str


class UserOut(BaseModel):
    id: uuid.UUID
    username: str
    display_name: str
    email: str | None
    is_active: bool
    last_login_at: datetime | None
    roles: list[RoleRef]
    created_at: datetime
    updated_at: datetime
