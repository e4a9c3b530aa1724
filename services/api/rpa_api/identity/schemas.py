"""Identity provider bodies: an LDAP directory's or an OpenID provider's settings; secrets are write-only."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StrictBool, model_validator


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


class OidcConfig(BaseModel):
    """An OpenID provider (authorization code flow with PKCE) and how its claims become a user.

    ``issuer`` is the provider's issuer URL (its ``/.well-known/openid-configuration`` is read from
    there); the client secret is given apart (``client_secret``) and never returned. The user's name
    is ``username_claim`` (``preferred_username`` by default; ``sub`` when absent) and its roles come
    from the ``groups_claim`` list of the ID token through ``group_roles``. After the callback the
    browser goes to ``app_url`` with a one-time code in the fragment (``#oidc_code=...``), which the
    web application trades for its tokens at ``POST /auth/oidc/token``. ``redirect_uri`` is the
    orchestrator's callback as registered at the provider (by default the API's own
    ``/api/v1/auth/oidc/callback`` as the request reached it).
    """

    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(min_length=8, max_length=300, pattern=r"^https?://[^\s#?]+$")
    client_id: str = Field(min_length=1, max_length=200)
    scopes: list[str] = Field(
        default_factory=lambda: ["openid", "profile", "email", "groups"], min_length=1, max_length=20
    )
    username_claim: str = Field(default="preferred_username", min_length=1, max_length=64)
    groups_claim: str = Field(default="groups", min_length=1, max_length=64)
    app_url: str = Field(min_length=8, max_length=500, pattern=r"^https?://[^\s#]+$")
    redirect_uri: str | None = Field(default=None, max_length=500, pattern=r"^https?://[^\s#]+$")
    timeout_s: int = Field(default=10, ge=1, le=60)

    @model_validator(mode="after")
    def _openid_scope(self) -> OidcConfig:
        if "openid" not in self.scopes:
            raise ValueError("scopes must include openid")
        if any(not s or " " in s or len(s) > 100 for s in self.scopes):
            raise ValueError("a scope is one non-empty word")
        return self


def _one_config(kind: str, ldap: object, oidc: object) -> None:
    if kind == "ldap" and (ldap is None or oidc is not None):
        raise ValueError("an ldap provider takes ldap settings (and no oidc settings)")
    if kind == "oidc" and (oidc is None or ldap is not None):
        raise ValueError("an oidc provider takes oidc settings (and no ldap settings)")


class ProviderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    kind: Literal["ldap", "oidc"] = "ldap"
    is_active: StrictBool = True
    ldap: LdapConfig | None = None
    bind_password: SecretStr | None = Field(default=None, max_length=500)
    oidc: OidcConfig | None = None
    client_secret: SecretStr | None = Field(default=None, max_length=500)
    group_roles: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Directory group name (LDAP) or groups claim value (OIDC) -> names of the account's roles",
    )

    @model_validator(mode="after")
    def _settings_of_kind(self) -> ProviderCreate:
        _one_config(self.kind, self.ldap, self.oidc)
        if self.kind == "oidc" and self.bind_password is not None:
            raise ValueError("bind_password is for ldap providers; an oidc provider takes client_secret")
        if self.kind == "ldap" and self.client_secret is not None:
            raise ValueError("client_secret is for oidc providers; an ldap provider takes bind_password")
        return self


class ProviderUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=100)
    is_active: StrictBool | None = None
    ldap: LdapConfig | None = None
    bind_password: SecretStr | None = Field(default=None, max_length=500)
    oidc: OidcConfig | None = None
    client_secret: SecretStr | None = Field(default=None, max_length=500)
    group_roles: dict[str, list[str]] | None = None


class ProviderOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    kind: str
    is_active: bool
    ldap: LdapConfig | None = None
    has_bind_password: bool
    oidc: OidcConfig | None = None
    has_client_secret: bool = False
    group_roles: dict[str, list[str]]
    created_at: datetime
    updated_at: datetime
