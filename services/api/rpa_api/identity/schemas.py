"""Identity provider bodies: an LDAP directory's settings; its bind password is write-only."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StrictBool


class LdapConfig(BaseModel):
    """Where the directory is and how users and groups are found in it.

    ``user_filter`` and ``group_filter`` get ``{username}`` / ``{dn}`` substituted (escaped for LDAP
    filters). A user whose ``shadowExpire`` (days since 1970-01-01, the stock ``nis`` schema) is on or
    before today is refused as disabled.
    """

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=8, max_length=300, pattern=r"^ldaps?://[^\s/]+/?$")
    bind_dn: str | None = Field(default=None, max_length=500)
    user_base_dn: str = Field(min_length=3, max_length=500)
    user_filter: str = Field(
        default="(uid={username})", min_length=12, max_length=500, pattern=r"^\(.*\{username\}.*\)$"
    )
    group_base_dn: str | None = Field(default=None, max_length=500)
    group_filter: str = Field(
        default="(member={dn})", min_length=6, max_length=500, pattern=r"^\(.*\{dn\}.*\)$"
    )
    group_name_attribute: str = Field(default="cn", min_length=1, max_length=64)
    email_attribute: str = Field(default="mail", min_length=1, max_length=64)
    display_name_attribute: str = Field(default="cn", min_length=1, max_length=64)
    timeout_s: int = Field(default=5, ge=1, le=60)


class ProviderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    kind: Literal["ldap"] = "ldap"
    is_active: StrictBool = True
    ldap: LdapConfig
    bind_password: SecretStr | None = Field(default=None, max_length=500)
    group_roles: dict[str, list[str]] = Field(
        default_factory=dict, description="Directory group name -> names of the account's roles"
    )


class ProviderUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=100)
    is_active: StrictBool | None = None
    ldap: LdapConfig | None = None
    bind_password: SecretStr | None = Field(default=None, max_length=500)
    group_roles: dict[str, list[str]] | None = None


class ProviderOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    kind: str
    is_active: bool
    ldap: LdapConfig
    has_bind_password: bool
    group_roles: dict[str, list[str]]
    created_at: datetime
    updated_at: datetime
