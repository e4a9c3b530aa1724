"""Bodies of the token endpoints, ``/auth/me`` and API keys.

An API key's secret appears only in ``ApiKeyCreated`` (the answer to its creation); listings show
its prefix, which is enough to tell keys apart.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from rpa_api.kit.schemas import Name
from rpa_common.models.enums import PermissionAction, PermissionObject


class _In(BaseModel):
    """Request bodies reject unknown fields: a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int
    refresh_token: str


class PermissionOut(_Out):
    object: PermissionObject
    action: PermissionAction


class MeRole(_Out):
    """A role of the caller (``/auth/me``)."""

    id: uuid.UUID
    name: str
    builtin: bool


class AccountRef(_Out):
    id: uuid.UUID
    name: str
    description: str


class MeUser(_Out):
    id: uuid.UUID
    username: str
    display_name: str
    email: str | None
    is_active: bool
    last_login_at: datetime | None


class MeFolder(_Out):
    id: uuid.UUID
    name: str


class MeOut(BaseModel):
    user: MeUser
    account: AccountRef
    roles: list[MeRole]
    permissions: list[PermissionOut]
    can: dict[str, list[str]]
    """The effective permissions by object: ``{"robots": ["read", "update"], ...}``."""
    all_folders: bool
    folder_ids: list[uuid.UUID]
    folders: list[MeFolder] | Literal["all"]
    """The access folders the caller's roles give (ids and names), or ``"all"``. Objects in no folder
    are visible to every role of the account."""
    via_api_key: uuid.UUID | None


class ApiKeyCreate(_In):
    name: Name
    expires_at: AwareDatetime | None = None


class ApiKeyOut(_Out):
    id: uuid.UUID
    user_id: uuid.UUID
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str
