"""Resource groups, resources and their values per scope: rules and queries.

Functions here run inside the request's unit of work and only ``flush``. A resource group carries
the access folder; a resource is seen through its group. A credential's password is sealed by
``rpa_common.credentials`` before it is stored and leaves only through ``reveal_value`` (audited).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal
from rpa_api.kit.audit import record
from rpa_api.kit.folders import check_folder, check_name_and_folder, check_visible
from rpa_api.kit.lookup import get_owned
from rpa_api.kit.names import flush_or_conflict, name_taken
from rpa_api.kit.patch import apply_patch, require_not_null
from rpa_api.resources import schemas
from rpa_common.credentials import CredentialUnreadable, MasterKeyError, password_of, seal_password
from rpa_common.errors import Conflict, NotFound, ServiceUnavailable, Unprocessable
from rpa_common.models import Calendar, Resource, ResourceGroup, ResourceValue, Robot, RobotGroup
from rpa_common.models.enums import ResourceKind, ResourceScope
from rpa_common.resources import TEXT_MAX_BYTES
from rpa_common.settings import Settings
from rpa_common.text import bad_text

log = structlog.get_logger(__name__)

# Groups ---------------------------------------------------------------------------------------------


def groups_query(principal: Principal) -> sa.Select[ResourceGroup]:
    return sa.select(ResourceGroup).where(
        ResourceGroup.account_id == principal.account_id, principal.folder_clause(ResourceGroup.folder_id)
    )


async def get_group(
    session: AsyncSession,
    principal: Principal,
    group_id: uuid.UUID,
    *,
    lock: bool = False,
    field: str | None = None,
) -> ResourceGroup:
    found = await session.scalar(
        groups_query(principal).where(ResourceGroup.id == group_id).with_for_update()
        if lock
        else groups_query(principal).where(ResourceGroup.id == group_id)
    )
    if found is None:
        raise NotFound.of("resource group", group_id, field=field)
    return found


async def resource_counts(session: AsyncSession, group_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, int]:
    ids = list(group_ids)
    if not ids:
        return {}
    rows = await session.execute(
        sa.select(Resource.group_id, sa.func.count())
        .where(Resource.group_id.in_(ids))
        .group_by(Resource.group_id)
    )
    return {gid: int(n) for gid, n in rows}


def group_out(group: Any, count: int) -> schemas.ResourceGroupOut:
    return schemas.ResourceGroupOut.model_validate(
        {
            "id": group.id,
            "name": group.name,
            "description": group.description,
            "folder_id": group.folder_id,
            "resource_count": count,
            "created_at": group.created_at,
            "updated_at": group.updated_at,
        }
    )


async def create_group(
    session: AsyncSession, principal: Principal, group_id: uuid.UUID, body: schemas.ResourceGroupCreate
) -> ResourceGroup:
    existing = await session.get(ResourceGroup, group_id)
    if existing is not None:
        return existing
    await check_folder(session, principal, body.folder_id)
    taken = f"a resource group named {body.name!r} already exists"
    if await name_taken(
        session, ResourceGroup.name, body.name, ResourceGroup.account_id == principal.account_id
    ):
        raise Conflict(taken, field="name")
    group = ResourceGroup(
        id=group_id,
        account_id=principal.account_id,
        folder_id=body.folder_id,
        name=body.name,
        description=body.description,
    )
    session.add(group)
    await flush_or_conflict(session, taken, "name")
    record(session, principal, "create", "resource_group", group.id, body.model_dump(mode="json"))
    return group


async def update_group(
    session: AsyncSession, principal: Principal, group_id: uuid.UUID, body: schemas.ResourceGroupUpdate
) -> ResourceGroup:
    fields = body.model_dump(exclude_unset=True)
    require_not_null(fields, "name", "description")
    group = await get_group(session, principal, group_id, lock=True)
    await check_name_and_folder(session, principal, group, fields, "a resource group")
    changes = apply_patch(group, fields)
    if changes:
        await flush_or_conflict(session, "a resource group with this name already exists", "name")
        record(session, principal, "update", "resource_group", group.id, changes)
    return group


async def delete_group(session: AsyncSession, principal: Principal, group_id: uuid.UUID) -> None:
    group = await get_group(session, principal, group_id, lock=True)
    held = (await resource_counts(session, [group.id])).get(group.id, 0)
    if held:
        raise Conflict(f"the resource group still holds {held} resource(s); delete or move them first")
    record(session, principal, "delete", "resource_group", group.id, {"name": group.name})
    await session.delete(group)
    await session.flush()


# Resources ------------------------------------------------------------------------------------------


def resources_query(principal: Principal) -> sa.Select[Resource]:
    """Resources of the caller's account whose group's folder the caller may see."""
    return (
        sa.select(Resource)
        .join(ResourceGroup, ResourceGroup.id == Resource.group_id)
        .where(Resource.account_id == principal.account_id, principal.folder_clause(ResourceGroup.folder_id))
    )


async def get_resource(
    session: AsyncSession, principal: Principal, resource_id: uuid.UUID, *, lock: bool = False
) -> Resource:
    return await get_owned(
        session,
        resources_query(principal).where(Resource.id == resource_id),
        "resource",
        resource_id,
        lock=lock,
        lock_of=Resource,
    )


async def _name_taken(
    session: AsyncSession, principal: Principal, name: str, but: uuid.UUID | None = None
) -> bool:
    return await name_taken(
        session, Resource.name, name, Resource.account_id == principal.account_id, but=but
    )


async def create_resource(
    session: AsyncSession, principal: Principal, resource_id: uuid.UUID, body: schemas.ResourceCreate
) -> Resource:
    existing = await session.get(Resource, resource_id)
    if existing is not None:
        return existing
    await get_group(session, principal, body.group_id, field="group_id")
    taken = f"a resource named {body.name!r} already exists in this account"
    if await _name_taken(session, principal, body.name):
        raise Conflict(taken, field="name")
    resource = Resource(
        id=resource_id,
        account_id=principal.account_id,
        group_id=body.group_id,
        name=body.name,
        kind=body.kind,
        description=body.description,
    )
    session.add(resource)
    await flush_or_conflict(session, taken, "name")
    record(session, principal, "create", "resource", resource.id, body.model_dump(mode="json"))
    return resource


async def update_resource(
    session: AsyncSession, principal: Principal, resource_id: uuid.UUID, body: schemas.ResourceUpdate
) -> tuple[Resource, str]:
    """The changed resource and its name before the change."""
    fields = body.model_dump(exclude_unset=True)
    require_not_null(fields, "name", "description", "group_id")
    resource = await get_resource(session, principal, resource_id, lock=True)
    old_name = resource.name
    if (
        "name" in fields
        and fields["name"] != resource.name
        and await _name_taken(session, principal, fields["name"], but=resource.id)
    ):
        raise Conflict(f"a resource named {fields['name']!r} already exists in this account", field="name")
    if "group_id" in fields and fields["group_id"] != resource.group_id:
        await get_group(session, principal, fields["group_id"], field="group_id")
    changes = apply_patch(resource, fields)
    if changes:
        await flush_or_conflict(session, "a resource with this name already exists in this account", "name")
        record(session, principal, "update", "resource", resource.id, changes)
    return resource, old_name


async def delete_resource(session: AsyncSession, principal: Principal, resource_id: uuid.UUID) -> Resource:
    resource = await get_resource(session, principal, resource_id, lock=True)
    record(
        session, principal, "delete", "resource", resource.id, {"name": resource.name, "kind": resource.kind}
    )
    await session.execute(sa.delete(ResourceValue).where(ResourceValue.resource_id == resource.id))
    await session.delete(resource)
    await session.flush()
    return resource


# Values ---------------------------------------------------------------------------------------------

# What a value's response reads; never the password's columns.
VALUE_COLUMNS = (
    ResourceValue.id,
    ResourceValue.resource_id,
    ResourceValue.scope,
    ResourceValue.robot_id,
    ResourceValue.robot_group_id,
    ResourceValue.text_value,
    ResourceValue.login,
    ResourceValue.secret_encrypted.is_not(None).label("has_password"),
    ResourceValue.expires_at,
    ResourceValue.calendar_id,
    ResourceValue.created_at,
    ResourceValue.updated_at,
)


def value_out(row: Any) -> schemas.ResourceValueOut:
    now = datetime.now(UTC)
    has_password = getattr(row, "has_password", None)
    if has_password is None:
        has_password = row.secret_encrypted is not None
    return schemas.ResourceValueOut(
        id=row.id,
        resource_id=row.resource_id,
        scope=row.scope,
        robot_id=row.robot_id,
        robot_group_id=row.robot_group_id,
        text=row.text_value,
        login=row.login,
        has_password=bool(has_password),
        expires_at=row.expires_at,
        expired=row.expires_at is not None and row.expires_at <= now,
        calendar_id=row.calendar_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def values_query(resource_id: uuid.UUID) -> Any:
    return sa.select(*VALUE_COLUMNS).where(ResourceValue.resource_id == resource_id)


async def list_values(
    session: AsyncSession,
    resource: Resource,
    *,
    scope: ResourceScope | None = None,
    expired: bool | None = None,
) -> list[schemas.ResourceValueOut]:
    stmt = values_query(resource.id)
    if scope is not None:
        stmt = stmt.where(ResourceValue.scope == scope)
    if expired is not None:
        now = datetime.now(UTC)
        passed = sa.and_(ResourceValue.expires_at.is_not(None), ResourceValue.expires_at <= now)
        stmt = stmt.where(passed if expired else sa.not_(passed))
    rows = (await session.execute(stmt.order_by(ResourceValue.scope, ResourceValue.scope_key))).all()
    return [value_out(r) for r in rows]


async def resource_detail(session: AsyncSession, resource: Resource) -> schemas.ResourceDetail:
    base = schemas.ResourceOut.model_validate(resource).model_dump()
    return schemas.ResourceDetail.model_validate({**base, "values": await list_values(session, resource)})


async def get_value(
    session: AsyncSession, resource: Resource, value_id: uuid.UUID, *, lock: bool = False
) -> ResourceValue:
    stmt = sa.select(ResourceValue).where(
        ResourceValue.id == value_id,
        ResourceValue.resource_id == resource.id,
        ResourceValue.account_id == resource.account_id,
    )
    return await get_owned(session, stmt, "resource value", value_id, lock=lock)


_KIND_FIELDS: dict[ResourceKind, tuple[str, ...]] = {
    ResourceKind.TEXT: ("text",),
    ResourceKind.CREDENTIALS: ("login", "password", "expires_at"),
    ResourceKind.CALENDAR: ("calendar_id",),
}
_VALUE_FIELDS = ("text", "login", "password", "expires_at", "calendar_id")


async def _scope_of(session: AsyncSession, principal: Principal, body: schemas.ResourceValueSet) -> str:
    """The value's ``scope_key``, after checking the scope's robot or group (404 naming the field)."""
    given = body.model_fields_set
    if body.scope is ResourceScope.ALL:
        for name in ("robot_id", "robot_group_id"):
            if name in given and getattr(body, name) is not None:
                raise Unprocessable(f"{name} is not given with scope 'all'", field=name)
        return "all"
    if body.scope is ResourceScope.ROBOT:
        if body.robot_group_id is not None:
            raise Unprocessable("robot_group_id is not given with scope 'robot'", field="robot_group_id")
        if body.robot_id is None:
            raise Unprocessable("scope 'robot' needs robot_id", field="robot_id")
        await check_visible(session, principal, Robot, body.robot_id, "robot", "robot_id")
        return f"robot:{body.robot_id}"
    if body.robot_id is not None:
        raise Unprocessable("robot_id is not given with scope 'robot_group'", field="robot_id")
    if body.robot_group_id is None:
        raise Unprocessable("scope 'robot_group' needs robot_group_id", field="robot_group_id")
    await check_visible(session, principal, RobotGroup, body.robot_group_id, "robot group", "robot_group_id")
    return f"group:{body.robot_group_id}"


async def set_value(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    resource_id: uuid.UUID,
    body: schemas.ResourceValueSet,
) -> tuple[Resource, ResourceValue, bool]:
    """Create or replace the value of one scope: ``(resource, value, created)``."""
    resource = await get_resource(
        session,
        principal,
        resource_id,
        lock=True,
    )
    allowed = _KIND_FIELDS[resource.kind]
    for name in _VALUE_FIELDS:
        if name not in allowed and getattr(body, name) is not None:
            raise Unprocessable(
                f"{name} is not a field of a {resource.kind.value} resource (give {', '.join(allowed)})",
                field=name,
            )
    scope_key = await _scope_of(session, principal, body)
    value = await session.scalar(
        sa.select(ResourceValue)
        .where(ResourceValue.resource_id == resource.id, ResourceValue.scope_key == scope_key)
        .with_for_update()
    )
    created = value is None
    password = body.password.get_secret_value() if body.password is not None else None
    changed: list[str] = []
    if resource.kind is ResourceKind.TEXT:
        if body.text is None:
            raise Unprocessable("a text resource's value needs text", field="text")
        reason = bad_text(body.text)
        if reason is not None:
            raise Unprocessable(f"text {reason}", field="text")
        if len(body.text.encode()) > TEXT_MAX_BYTES:
            raise Unprocessable(f"text is longer than {TEXT_MAX_BYTES} bytes (UTF-8)", field="text")
    elif resource.kind is ResourceKind.CREDENTIALS:
        if body.login is None:
            raise Unprocessable("a credential's value needs login", field="login")
        if password is None and (value is None or value.secret_encrypted is None):
            raise Unprocessable("a new credential value needs password", field="password")
        if password is not None:
            if password == "":
                raise Unprocessable("password must not be empty", field="password")
            reason = bad_text(password)
            if reason is not None:
                # The reason names the rule, never the password.
                raise Unprocessable(f"password {reason}", field="password")
    else:
        if body.calendar_id is None:
            raise Unprocessable("a calendar resource's value needs calendar_id", field="calendar_id")
        cal = await session.scalar(
            sa.select(Calendar.id).where(
                Calendar.id == body.calendar_id,
                Calendar.account_id == principal.account_id,
                principal.folder_clause(Calendar.folder_id),
            )
        )
        if cal is None:
            raise NotFound.of("calendar", body.calendar_id, field="calendar_id")
    if value is None:
        value = ResourceValue(
            id=uuid.uuid4(),
            account_id=principal.account_id,
            resource_id=resource.id,
            scope=body.scope,
            robot_id=body.robot_id if body.scope is ResourceScope.ROBOT else None,
            robot_group_id=body.robot_group_id if body.scope is ResourceScope.ROBOT_GROUP else None,
            scope_key=scope_key,
        )
        session.add(value)
    if resource.kind is ResourceKind.TEXT:
        if value.text_value != body.text:
            value.text_value = body.text
            changed.append("text")
    elif resource.kind is ResourceKind.CREDENTIALS:
        if value.login != body.login:
            value.login = body.login
            changed.append("login")
        if value.expires_at != body.expires_at:
            value.expires_at = body.expires_at
            changed.append("expires_at")
        if password is not None:
            await seal_password(session, settings, value, password)
            changed.append("password")
    elif value.calendar_id != body.calendar_id:
        value.calendar_id = body.calendar_id
        changed.append("calendar_id")
    if changed and not created:
        value.updated_at = datetime.now(UTC)
    await flush_or_conflict(session, "a value for this scope was set at the same moment; try again", "scope")
    if changed or created:
        audit: dict[str, Any] = {
            "resource": resource.name,
            "value_id": str(value.id),
            "scope": body.scope.value,
            "robot_id": value.robot_id,
            "robot_group_id": value.robot_group_id,
            "changed_fields": changed,
        }
        if "text" in changed:
            audit["text"] = body.text
        if "login" in changed:
            audit["login"] = body.login
        record(
            session, principal, "set_value" if not created else "create_value", "resource", resource.id, audit
        )
    return resource, value, created


async def delete_value(
    session: AsyncSession, principal: Principal, resource_id: uuid.UUID, value_id: uuid.UUID
) -> Resource:
    resource = await get_resource(session, principal, resource_id, lock=True)
    value = await get_value(session, resource, value_id, lock=True)
    record(
        session,
        principal,
        "delete_value",
        "resource",
        resource.id,
        {"resource": resource.name, "value_id": str(value.id), "scope": value.scope.value},
    )
    await session.delete(value)
    await session.flush()
    return resource


async def reveal_value(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    resource_id: uuid.UUID,
    value_id: uuid.UUID,
) -> schemas.CredentialRevealed:
    """The clear password of one credential value, and the audit record of who saw it (no password)."""
    resource = await get_resource(session, principal, resource_id)
    if resource.kind is not ResourceKind.CREDENTIALS:
        raise Conflict(
            f"resource {resource.name!r} is {resource.kind.value}: only credentials have a password"
        )
    value = await get_value(session, resource, value_id)
    try:
        password = await password_of(session, settings, value)
    except (CredentialUnreadable, MasterKeyError) as exc:
        log.error(
            "credentials.unreadable", resource_id=str(resource.id), value_id=str(value.id), error=str(exc)
        )
        raise ServiceUnavailable(
            "this credential cannot be decrypted with the configured master keys; tell an operator"
        ) from None
    record(
        session,
        principal,
        "reveal",
        "resource",
        resource.id,
        {
            "resource": resource.name,
            "value_id": str(value.id),
            "scope": value.scope.value,
            "login": value.login,
        },
    )
    now = datetime.now(UTC)
    return schemas.CredentialRevealed(
        resource_id=resource.id,
        value_id=value.id,
        login=value.login,
        password=password,
        expires_at=value.expires_at,
        expired=value.expires_at is not None and value.expires_at <= now,
    )
