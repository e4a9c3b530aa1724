"""Accounts (tenants), access folders, roles and permissions, users and their credentials."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from rpa_common.models.base import Base, IdMixin, StrEnumType, TimestampMixin, account_fk, unique_name, utcnow
from rpa_common.models.enums import PermissionAction, PermissionObject


class Account(IdMixin, TimestampMixin, Base):
    """An isolated tenant: its own robots, processes, queues, users..."""

    __tablename__ = "account"
    __table_args__ = unique_name("account")
    name: Mapped[str] = mapped_column(sa.String(100))
    description: Mapped[str] = mapped_column(sa.String(1000), default="")
    is_active: Mapped[bool] = mapped_column(default=True)
    # Retention (days): robot messages and screenshots older than this are removed by the scheduler.
    message_retention_days: Mapped[int] = mapped_column(default=30, server_default=sa.text("30"))
    screenshot_retention_days: Mapped[int] = mapped_column(default=30, server_default=sa.text("30"))


class AccessFolder(IdMixin, TimestampMixin, Base):
    """A label on robots, processes, resources, queues and triggers; roles see only theirs."""

    __tablename__ = "access_folder"
    __table_args__ = unique_name("access_folder")
    account_id: Mapped[uuid.UUID] = account_fk()
    name: Mapped[str] = mapped_column(sa.String(100))
    description: Mapped[str] = mapped_column(sa.String(1000), default="")


class Role(IdMixin, TimestampMixin, Base):
    __tablename__ = "role"
    __table_args__ = unique_name("role")
    account_id: Mapped[uuid.UUID] = account_fk()
    name: Mapped[str] = mapped_column(sa.String(100))
    description: Mapped[str] = mapped_column(sa.String(1000), default="")
    builtin: Mapped[bool] = mapped_column(default=False)
    # True: the role sees objects of every folder, and objects with no folder.
    all_folders: Mapped[bool] = mapped_column(default=True)

    permissions: Mapped[list[RolePermission]] = relationship(
        lazy="raise", cascade="all, delete-orphan", passive_deletes=True
    )
    folders: Mapped[list[RoleFolder]] = relationship(
        lazy="raise", cascade="all, delete-orphan", passive_deletes=True
    )


class RolePermission(Base):
    """One allowed (object, action) pair of a role."""

    __tablename__ = "role_permission"
    role_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("role.id", ondelete="CASCADE"), primary_key=True)
    object: Mapped[PermissionObject] = mapped_column(StrEnumType(PermissionObject), primary_key=True)
    action: Mapped[PermissionAction] = mapped_column(StrEnumType(PermissionAction, 16), primary_key=True)


class RoleFolder(Base):
    __tablename__ = "role_folder"
    role_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("role.id", ondelete="CASCADE"), primary_key=True)
    folder_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("access_folder.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class User(IdMixin, TimestampMixin, Base):
    """A person (or service user). Usernames are unique across the installation."""

    __tablename__ = "user_account"
    __table_args__ = unique_name("user_account", "username")
    account_id: Mapped[uuid.UUID] = account_fk()
    username: Mapped[str] = mapped_column(sa.String(150))
    display_name: Mapped[str] = mapped_column(sa.String(200), default="")
    email: Mapped[str | None] = mapped_column(sa.String(320))
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    is_active: Mapped[bool] = mapped_column(default=True)
    last_login_at: Mapped[datetime | None]
    # Bumped to invalidate every access token issued before (logout everywhere, password change).
    token_version: Mapped[int] = mapped_column(default=0)

    roles: Mapped[list[UserRole]] = relationship(
        lazy="raise", cascade="all, delete-orphan", passive_deletes=True
    )


class UserRole(Base):
    __tablename__ = "user_role"
    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("user_account.id", ondelete="CASCADE"), primary_key=True
    )
    role_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("role.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class ApiKey(IdMixin, Base):
    """A key a script or CI pipeline uses in place of a user's password; shown once, stored hashed."""

    __tablename__ = "api_key"
    account_id: Mapped[uuid.UUID] = account_fk()
    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("user_account.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(sa.String(100))
    prefix: Mapped[str] = mapped_column(sa.String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class ExternalApp(IdMixin, TimestampMixin, Base):
    """An OAuth2 client (client credentials grant) a CI pipeline or another application logs in as.

    It acts for its creator (``user_id``), with at most the creator's permissions: what it may do is
    its ``scopes`` ("object:action" strings) intersected with the creator's current grant, and with
    ``folder_ids`` (when set) intersected with the creator's folders. The secret is stored hashed;
    ``token_version`` is in every token it gets, so rotating the secret or disabling the app ends them.
    """

    __tablename__ = "external_app"
    account_id: Mapped[uuid.UUID] = account_fk()
    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("user_account.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(sa.String(100))
    client_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    secret_hash: Mapped[str] = mapped_column(sa.String(128))
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    folder_ids: Mapped[list[Any] | None]
    is_active: Mapped[bool] = mapped_column(default=True)
    token_version: Mapped[int] = mapped_column(default=0)
    last_token_at: Mapped[datetime | None]


class RateLimitWindow(Base):
    """Requests counted in one fixed window for one caller, shared by every API replica.

    ``key`` is ``"<kind>:<hash of the caller>:<window number>"``; rows are deleted once expired.
    """

    __tablename__ = "rate_limit_window"
    key: Mapped[str] = mapped_column(sa.String(120), primary_key=True)
    hits: Mapped[int] = mapped_column(default=0)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class RefreshToken(IdMixin, Base):
    """A refresh token (hashed). Reuse of a rotated token revokes its whole family."""

    __tablename__ = "refresh_token"
    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("user_account.id", ondelete="CASCADE"), index=True
    )
    family_id: Mapped[uuid.UUID] = mapped_column(index=True)
    token_hash: Mapped[str] = mapped_column(sa.String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class LoginThrottle(Base):
    """Failed logins per key (user, and user+address): kept in the database so replicas agree."""

    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    last_failure_at: Mapped[datetime] = mapped_column(default=utcnow)
    blocked_until: Mapped[datetime | None]


class IdentityProvider(IdMixin, TimestampMixin, Base):
    """An account's external login (issue 12): an LDAP directory or an OpenID provider (``kind``).

    ``config`` holds the non-secret settings (LDAP: server URL, base DNs, filters, attribute names;
    OIDC: issuer, client id, scopes, claims) and ``group_roles`` maps group names to the account's
    role names. The one secret (the LDAP service bind password or the OpenID client secret) is kept
    encrypted in ``secret_encrypted``, the account id bound as
    associated data, and is never returned by the API.
    """

    __tablename__ = "identity_provider"
    __table_args__ = (sa.UniqueConstraint("account_id", "name"),)
    account_id: Mapped[uuid.UUID] = account_fk()
    name: Mapped[str] = mapped_column(sa.String(100))
    kind: Mapped[str] = mapped_column(sa.String(16))
    is_active: Mapped[bool] = mapped_column(default=True)
    config: Mapped[dict[str, Any]]
    group_roles: Mapped[dict[str, Any]]
    secret_encrypted: Mapped[bytes | None]


class OidcLogin(IdMixin, Base):
    """One browser's OpenID Connect login through an account's provider, from redirect to token.

    Started by ``/auth/oidc/{provider}/login`` (the state's hash, the nonce, the PKCE verifier
    encrypted), ended at the callback (``callback_at``: a state is good once), which leaves the user
    and a one-time hand-off code (hashed) that the web application trades for its tokens once
    (``redeemed_at``). Rows live minutes: those expired for an hour are deleted when a new login starts.
    """

    __tablename__ = "oidc_login"
    provider_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("identity_provider.id", ondelete="CASCADE"), index=True
    )
    state_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    nonce: Mapped[str] = mapped_column(sa.String(64))
    verifier_encrypted: Mapped[bytes]
    redirect_uri: Mapped[str] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    callback_at: Mapped[datetime | None]
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("user_account.id", ondelete="CASCADE"), index=True
    )
    handoff_hash: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    redeemed_at: Mapped[datetime | None]
