"""A short-lived cache of who callers are and what they may do (their "grant").

Resolving a caller takes two or three queries, more than most requests' own work, so each API
replica keeps grants for ``TTL_S`` seconds. A change to users, roles, folders, API keys or the
account (anything whose audit record names such an object) clears that account's grants on this
replica after its commit, and on every other replica through ``AUTH_CHANGED``; should that message
be lost, a stale grant lives at most ``TTL_S`` seconds.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from rpa_common.models.enums import PermissionAction, PermissionObject
from rpa_common.nats import subjects
from rpa_common.nats.messages import AuthChanged

log = structlog.get_logger(__name__)

TTL_S = 5.0
IDENTITY_OBJECTS = frozenset({"user", "role", "folder", "api_key", "account", "external_app"})
SIGN_IN_ACTIONS = frozenset({"login", "login_failed", "refresh", "token"})
"""Audited actions on identity objects that hand out (or refuse) credentials but change nothing a
grant holds (roles, folders, ``is_active``, ``token_version``): they keep the account's grants, so a
busy CI pipeline taking a token per run does not empty every replica's cache."""
SESSION_KEY = "rpa.auth_changed"
"""``session.info`` entry where ``audit.record`` notes the accounts whose grants a change affects."""


@dataclass(frozen=True)
class RoleBrief:
    id: uuid.UUID
    name: str
    builtin: bool


@dataclass(frozen=True)
class UserGrant:
    """Who a user is and what they may do; also all that ``/auth/me`` shows, so it needs no query."""

    account_id: uuid.UUID
    user_id: uuid.UUID
    username: str
    token_version: int
    is_active: bool
    permissions: frozenset[tuple[PermissionObject, PermissionAction]]
    all_folders: bool
    folder_ids: frozenset[uuid.UUID]
    display_name: str = ""
    email: str | None = None
    last_login_at: datetime | None = None
    account_name: str = ""
    account_description: str = ""
    roles: tuple[RoleBrief, ...] = ()
    memo: dict[Any, bytes] = field(default_factory=dict, compare=False, repr=False)
    """Answers made from this grant alone (``/auth/me``), kept as long as the grant is."""


@dataclass(frozen=True)
class KeyGrant:
    """An API key row, as authentication needs it."""

    id: uuid.UUID
    account_id: uuid.UUID
    user_id: uuid.UUID
    key_hash: str
    revoked: bool
    expires_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True)
class AppGrant:
    """An external application (OAuth2 client), as authenticating its tokens needs it."""

    id: uuid.UUID
    account_id: uuid.UUID
    user_id: uuid.UUID
    is_active: bool
    token_version: int
    scopes: frozenset[str]
    folder_ids: frozenset[uuid.UUID] | None


class GrantCache:
    def __init__(self, ttl_s: float = TTL_S) -> None:
        self.ttl_s = ttl_s
        self._users: dict[uuid.UUID, tuple[float, UserGrant]] = {}
        self._keys: dict[str, tuple[float, KeyGrant]] = {}
        self._claims: dict[str, tuple[float, dict[str, Any]]] = {}
        self._apps: dict[uuid.UUID, tuple[float, AppGrant]] = {}
        self._subscribed_to: NATS | None = None

    def user(self, user_id: uuid.UUID) -> UserGrant | None:
        hit = self._users.get(user_id)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def key(self, prefix: str) -> KeyGrant | None:
        hit = self._keys.get(prefix)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def claims(self, token: str) -> dict[str, Any] | None:
        """The verified claims of an access token seen before (its expiry is checked by the caller)."""
        hit = self._claims.get(token)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put_claims(self, token: str, claims: dict[str, Any]) -> None:
        # Verifying a token's signature costs more than the rest of a cached request; the claims of
        # a token are fixed, so they are kept like grants. Expiry and token version are still checked
        # on every request (the version against the user's grant).
        if len(self._claims) > 50_000:
            self._claims.clear()
        self._claims[token] = (time.monotonic() + self.ttl_s, claims)

    def put_user(self, grant: UserGrant) -> None:
        if len(self._users) > 50_000:
            self._users.clear()
        self._users[grant.user_id] = (time.monotonic() + self.ttl_s, grant)

    def put_key(self, prefix: str, grant: KeyGrant) -> None:
        if len(self._keys) > 50_000:
            self._keys.clear()
        self._keys[prefix] = (time.monotonic() + self.ttl_s, grant)

    def app(self, app_id: uuid.UUID) -> AppGrant | None:
        hit = self._apps.get(app_id)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put_app(self, grant: AppGrant) -> None:
        if len(self._apps) > 50_000:
            self._apps.clear()
        self._apps[grant.id] = (time.monotonic() + self.ttl_s, grant)

    def invalidate(self, account_id: uuid.UUID) -> None:
        self._apps = {k: v for k, v in self._apps.items() if v[1].account_id != account_id}
        self._users = {k: v for k, v in self._users.items() if v[1].account_id != account_id}
        self._keys = {k: v for k, v in self._keys.items() if v[1].account_id != account_id}

    async def subscribe(self, nc: NATS) -> None:
        """Hear other replicas' changes (once per connection)."""
        if self._subscribed_to is nc:
            return
        self._subscribed_to = nc

        async def on_change(msg: Msg) -> None:
            try:
                self.invalidate(AuthChanged.decode(msg.data).account_id)
            except Exception as exc:  # a malformed message must not stop the subscription
                log.warning("grants.bad_message", error=str(exc))

        await nc.subscribe(subjects.AUTH_CHANGED, cb=on_change)
