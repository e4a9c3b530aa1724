"""Identity providers of an account (LDAP directories, OpenID providers), and the directory side of
an LDAP login.

The one secret of a provider (an LDAP service bind password, an OpenID client secret) is encrypted with the account id bound as associated data
(``rpa_common.security.Encryptor``); it is decrypted only to bind, never returned nor logged.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import structlog
from ldap3 import NONE, SUBTREE, Connection, Server
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal
from rpa_api.identity import schemas
from rpa_api.kit import audit
from rpa_common.errors import Conflict, NotFound, ServiceUnavailable, Unprocessable
from rpa_common.models import IdentityProvider, Role
from rpa_common.security import Encryptor
from rpa_common.settings import Settings

log = structlog.get_logger(__name__)


def _context(account_id: uuid.UUID) -> str:
    return f"identity-provider:{account_id}"


def seal_secret(settings: Settings, account_id: uuid.UUID, secret: str) -> bytes:
    return Encryptor.from_settings(settings).encrypt(secret, context=_context(account_id))


def open_secret(settings: Settings, row: IdentityProvider) -> str | None:
    if row.secret_encrypted is None:
        return None
    return Encryptor.from_settings(settings).decrypt(row.secret_encrypted, context=_context(row.account_id))


def to_out(row: IdentityProvider) -> schemas.ProviderOut:
    return schemas.ProviderOut(
        id=row.id,
        name=row.name,
        kind=row.kind,
        is_active=row.is_active,
        ldap=schemas.LdapConfig.model_validate(row.config) if row.kind == "ldap" else None,
        has_bind_password=row.kind == "ldap" and row.secret_encrypted is not None,
        oidc=schemas.OidcConfig.model_validate(row.config) if row.kind == "oidc" else None,
        has_client_secret=row.kind == "oidc" and row.secret_encrypted is not None,
        group_roles=row.group_roles,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def _check_roles(
    session: AsyncSession, account_id: uuid.UUID, group_roles: dict[str, list[str]]
) -> None:
    wanted = {name for names in group_roles.values() for name in names}
    if not wanted:
        return
    found = set(
        (
            await session.execute(
                sa.select(Role.name).where(Role.account_id == account_id, Role.name.in_(wanted))
            )
        ).scalars()
    )
    missing = sorted(wanted - found)
    if missing:
        raise Unprocessable(f"no such role in this account: {', '.join(missing)}", field="group_roles")


async def _name_free(session: AsyncSession, account_id: uuid.UUID, name: str, but: uuid.UUID | None) -> None:
    stmt = sa.select(IdentityProvider.id).where(
        IdentityProvider.account_id == account_id, IdentityProvider.name == name
    )
    if but is not None:
        stmt = stmt.where(IdentityProvider.id != but)
    if (await session.execute(stmt)).first() is not None:
        raise Conflict(f"an identity provider named {name!r} already exists", field="name")


async def get(session: AsyncSession, account_id: uuid.UUID, provider_id: uuid.UUID) -> IdentityProvider:
    row = await session.get(IdentityProvider, provider_id)
    if row is None or row.account_id != account_id:
        raise NotFound("no such identity provider", field="provider_id")
    return row


async def create(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    provider_id: uuid.UUID,
    body: schemas.ProviderCreate,
) -> IdentityProvider:
    existing = await session.get(IdentityProvider, provider_id)
    if existing is not None:  # a re-run after a lost commit
        return existing
    await _name_free(session, principal.account_id, body.name, None)
    await _check_roles(session, principal.account_id, body.group_roles)
    now = datetime.now(UTC)
    config = body.ldap or body.oidc
    assert config is not None  # ProviderCreate checks one matches the kind
    secret = body.bind_password or body.client_secret
    row = IdentityProvider(
        id=provider_id,
        account_id=principal.account_id,
        name=body.name,
        kind=body.kind,
        is_active=body.is_active,
        config=config.model_dump(mode="json"),
        group_roles=body.group_roles,
        secret_encrypted=(
            seal_secret(settings, principal.account_id, secret.get_secret_value())
            if secret is not None
            else None
        ),
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    await session.flush()
    audit.record(
        session,
        principal,
        "create",
        "identity_provider",
        row.id,
        {"name": row.name, "kind": row.kind, "config": row.config, "group_roles": row.group_roles},
    )
    return row


async def update(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    provider_id: uuid.UUID,
    body: schemas.ProviderUpdate,
) -> IdentityProvider:
    row = await get(session, principal.account_id, provider_id)
    if row.kind == "ldap" and (body.oidc is not None or body.client_secret is not None):
        raise Unprocessable("an ldap provider takes ldap settings and bind_password", field="oidc")
    if row.kind == "oidc" and (body.ldap is not None or body.bind_password is not None):
        raise Unprocessable("an oidc provider takes oidc settings and client_secret", field="ldap")
    changes: dict[str, Any] = {}
    if body.name is not None and body.name != row.name:
        await _name_free(session, principal.account_id, body.name, row.id)
        row.name = changes["name"] = body.name
    if body.is_active is not None:
        row.is_active = changes["is_active"] = body.is_active
    if body.ldap is not None:
        row.config = changes["config"] = body.ldap.model_dump(mode="json")
    if body.oidc is not None:
        row.config = changes["config"] = body.oidc.model_dump(mode="json")
    if body.group_roles is not None:
        await _check_roles(session, principal.account_id, body.group_roles)
        row.group_roles = changes["group_roles"] = body.group_roles
    if body.bind_password is not None:
        row.secret_encrypted = seal_secret(settings, row.account_id, body.bind_password.get_secret_value())
        changes["bind_password_changed"] = True
    if body.client_secret is not None:
        row.secret_encrypted = seal_secret(settings, row.account_id, body.client_secret.get_secret_value())
        changes["client_secret_changed"] = True
    row.updated_at = datetime.now(UTC)
    await session.flush()
    audit.record(session, principal, "update", "identity_provider", row.id, changes)
    return row


async def delete(session: AsyncSession, principal: Principal, provider_id: uuid.UUID) -> None:
    row = await get(session, principal.account_id, provider_id)
    await session.delete(row)
    await session.flush()
    audit.record(session, principal, "delete", "identity_provider", provider_id, {"name": row.name})


# The directory ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DirectoryUser:
    dn: str
    email: str | None
    display_name: str
    groups: list[str]


class DirectoryRefused(Exception):
    """Unknown user, wrong password or disabled entry: ``reason`` goes to the audit trail only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _first(entry: Any, attr: str) -> str | None:
    values = entry.entry_attributes_as_dict.get(attr) or []
    for v in values:
        if v not in (None, ""):
            return str(v)
    return None


def _expired(shadow_expire: str | None, today_days: int) -> bool:
    if shadow_expire is None:
        return False
    try:
        days = int(shadow_expire)
    except ValueError:
        return True  # an unreadable expiry is no licence to log in
    return days != -1 and days <= today_days


def ldap_authenticate(
    cfg: schemas.LdapConfig, bind_password: str | None, username: str, password: str
) -> DirectoryUser:
    """Search the user's DN with the service account, bind as the user, read their groups.

    Blocking (ldap3 is synchronous): call it in a thread. Raises ``DirectoryRefused`` for a refusal
    and ``ServiceUnavailable`` when the directory cannot be reached or refuses the service account.
    """
    if not password:
        # An empty password is an "unauthenticated bind" that many servers accept: never a login.
        raise DirectoryRefused("empty password")
    try:
        server = Server(cfg.url, connect_timeout=cfg.timeout_s, get_info=NONE)
        svc = Connection(
            server,
            user=cfg.bind_dn,
            password=bind_password,
            receive_timeout=cfg.timeout_s,
            raise_exceptions=False,
            read_only=True,
        )
        if not svc.bind():
            log.warning(
                "identity.ldap_service_bind_failed", url=cfg.url, result=svc.result.get("description")
            )
            raise ServiceUnavailable(
                "the directory refused the orchestrator's service account", retry_after_s=30
            )
        try:
            flt = cfg.user_filter.replace("{username}", escape_filter_chars(username))
            attrs = [cfg.email_attribute, cfg.display_name_attribute, "shadowExpire"]
            svc.search(cfg.user_base_dn, flt, SUBTREE, attributes=attrs, size_limit=2)
            entries = list(svc.entries)
            if len(entries) != 1:
                raise DirectoryRefused("unknown user" if not entries else "ambiguous user")
            entry = entries[0]
            dn = str(entry.entry_dn)
            today = (datetime.now(UTC).date() - datetime(1970, 1, 1, tzinfo=UTC).date()).days
            if _expired(_first(entry, "shadowExpire"), today):
                raise DirectoryRefused("disabled")
            user_conn = Connection(
                server, user=dn, password=password, receive_timeout=cfg.timeout_s, raise_exceptions=False
            )
            if not user_conn.bind():
                if user_conn.result.get("result") == 49:  # invalidCredentials
                    raise DirectoryRefused("wrong password")
                raise DirectoryRefused(f"bind refused: {user_conn.result.get('description')}")
            user_conn.unbind()
            groups: list[str] = []
            if cfg.group_base_dn:
                gflt = cfg.group_filter.replace("{dn}", escape_filter_chars(dn))
                svc.search(cfg.group_base_dn, gflt, SUBTREE, attributes=[cfg.group_name_attribute])
                groups = sorted({g for e in svc.entries if (g := _first(e, cfg.group_name_attribute))})
            return DirectoryUser(
                dn=dn,
                email=_first(entry, cfg.email_attribute),
                display_name=_first(entry, cfg.display_name_attribute) or username,
                groups=groups,
            )
        finally:
            svc.unbind()
    except (LDAPException, OSError) as exc:
        log.warning("identity.ldap_unreachable", url=cfg.url, error=type(exc).__name__)
        raise ServiceUnavailable(
            "the identity provider's directory cannot be reached; try again later", retry_after_s=30
        ) from None
