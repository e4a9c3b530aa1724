"""Bodies of the external-application endpoints. The secret appears only in ``ExternalAppSecret``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rpa_api.kit.schemas import Name

Scope = Name


class ExternalAppCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    scopes: list[Scope] = Field(
        min_length=1,
        max_length=200,
        description='Permissions ("object:action", e.g. "jobs:create") or names of roles of the account, '
        "whose permissions the app gets. Each must be one the creator holds.",
    )
    folder_ids: list[uuid.UUID] | None = Field(
        None,
        max_length=500,
        description="Restrict the app to these folders (each one the creator may use); null: the creator's.",
    )


class ExternalAppUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    is_active: bool | None = Field(None, description="false disables the app and ends its tokens at once")


class ExternalAppOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    client_id: str
    user_id: uuid.UUID = Field(description="The creator, whom the app acts for")
    scopes: list[str] = Field(description='The permissions the app may use ("object:action")')
    folder_ids: list[uuid.UUID] | None
    is_active: bool
    created_at: datetime
    updated_at: datetime
    last_token_at: datetime | None


class ExternalAppSecret(ExternalAppOut):
    client_secret: str = Field(description="Shown in this answer only; stored hashed")


class ClientTokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int
    scope: str
