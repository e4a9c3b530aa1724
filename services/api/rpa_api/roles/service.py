"""Roles of an account: create, change, delete; built-in roles stay as they are.

Nobody grants what they do not hold: a role's permissions (and folders) must be within the caller's
own, or the request is refused (403). Otherwise anyone allowed to edit roles could make themselves
Administrator.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from rpa_api.deps import Principal
from rpa_api.kit import audit
from rpa_api.kit.lookup import get_owned
from rpa_api.roles.schemas import Permission, RoleCreate, RoleOut, RoleUpdate
from rpa_common.errors import Conflict, Forbidden, NotFound, Unprocessable
from rpa_common.models import AccessFolder, Role, RoleFolder, RolePermission, UserRole
from rpa_common.models.enums import PermissionAction, PermissionObject

ADMINISTRATOR = "Administrator"


def role_out(role: Role) -> RoleOut:
    """The response of a role whose permissions and folders are loaded."""
    return RoleOut(
        id=role.id,
        name=role.name,
        description=role.description,
        builtin=role.builtin,
        all_folders=role.all_folders,
        folder_ids=sorted((f.folder_id for f in role.folders), key=str),
        permissions=sorted(
            (Permission(object=p.object, action=p.action) for p in role.permissions),
            key=lambda p: (p.object.value, p.action.value),
        ),
        created_at=role.created_at,
        updated_at=role.updated_at,
    )


def roles_query(principal: Principal) -> sa.Select[Role]:
    return (
        sa.select(Role)
        .where(Role.account_id == principal.account_id)
        .options(selectinload(Role.permissions), selectinload(Role.folders))
    )


async def get_role(
    session: AsyncSession, principal: Principal, role_id: uuid.UUID, *, lock: bool = False
) -> Role:
    return await get_owned(
        session, roles_query(principal).where(Role.id == role_id), "role", role_id, lock=lock
    )


async def roles_in_account(
    session: AsyncSession, principal: Principal, role_ids: Sequence[uuid.UUID], field: str
) -> list[Role]:
    """The roles of these ids, all in the caller's account (404 naming ``field`` otherwise)."""
    wanted = list(dict.fromkeys(role_ids))
    if not wanted:
        return []
    found = (
        (await session.execute(roles_query(principal).where(Role.id.in_(wanted)))).scalars().unique().all()
    )
    by_id = {r.id: r for r in found}
    for rid in wanted:
        if rid not in by_id:
            raise NotFound.of("role", rid, field=field)
    return [by_id[rid] for rid in wanted]


def check_may_grant(principal: Principal, roles: Iterable[Role], field: str) -> None:
    """403 unless every permission and folder of ``roles`` is within the caller's own."""
    for role in roles:
        perms = {(p.object, p.action) for p in role.permissions}
        folders = {f.folder_id for f in role.folders}
        _check_within(principal, perms, role.all_folders, folders, field, f"role {role.name!r}")


def _check_within(
    principal: Principal,
    perms: set[tuple[PermissionObject, PermissionAction]],
    all_folders: bool,
    folder_ids: set[uuid.UUID],
    field: str,
    what: str,
) -> None:
    missing = perms - principal.permissions
    if missing:
        names = ", ".join(sorted(f"{o.value}:{a.value}" for o, a in missing))
        raise Forbidden(f"{what} grants permissions the caller does not hold: {names}", field=field)
    if not principal.all_folders and (all_folders or not folder_ids <= principal.folder_ids):
        raise Forbidden(f"{what} reaches folders the caller does not see", field=field)


async def _check_folders(
    session: AsyncSession, principal: Principal, folder_ids: Sequence[uuid.UUID]
) -> None:
    wanted = set(folder_ids)
    if not wanted:
        return
    found = set(
        (
            await session.execute(
                sa.select(AccessFolder.id).where(
                    AccessFolder.account_id == principal.account_id, AccessFolder.id.in_(wanted)
                )
            )
        ).scalars()
    )
    for fid in folder_ids:
        if fid not in found:
            raise NotFound.of("folder", fid, field="folder_ids")


def _check_folder_choice(all_folders: bool, folder_ids: Sequence[uuid.UUID]) -> None:
    if all_folders and folder_ids:
        raise Unprocessable("folder_ids are only meaningful with all_folders=false", field="folder_ids")


async def _name_free(
    session: AsyncSession, principal: Principal, name: str, except_id: uuid.UUID | None
) -> None:
    # Compared case-insensitively on both databases (MariaDB's collation would anyway).
    stmt = sa.select(Role.id).where(
        Role.account_id == principal.account_id, sa.func.lower(Role.name) == name.lower()
    )
    if except_id is not None:
        stmt = stmt.where(Role.id != except_id)
    if (await session.execute(stmt.limit(1))).first() is not None:
        raise Conflict(f"a role named {name!r} already exists", field="name")


async def _flush(session: AsyncSession, name: str) -> None:
    try:
        await session.flush()
    except IntegrityError:  # a concurrent create of the same name won the race
        raise Conflict(f"a role named {name!r} already exists", field="name") from None


def _pairs(perms: Iterable[Permission]) -> set[tuple[PermissionObject, PermissionAction]]:
    return {(p.object, p.action) for p in perms}


async def create_role(
    session: AsyncSession, principal: Principal, role_id: uuid.UUID, body: RoleCreate
) -> RoleOut:
    existing = (await session.execute(roles_query(principal).where(Role.id == role_id))).scalar_one_or_none()
    if existing is not None:  # a re-run after a commit that did happen
        return role_out(existing)
    perms = _pairs(body.permissions)
    _check_folder_choice(body.all_folders, body.folder_ids)
    _check_within(principal, perms, body.all_folders, set(body.folder_ids), "permissions", "the role")
    await _check_folders(session, principal, body.folder_ids)
    await _name_free(session, principal, body.name, None)
    session.add(
        Role(
            id=role_id,
            account_id=principal.account_id,
            name=body.name,
            description=body.description,
            builtin=False,
            all_folders=body.all_folders,
        )
    )
    await _flush(session, body.name)
    session.add_all(RolePermission(role_id=role_id, object=o, action=a) for o, a in perms)
    session.add_all(RoleFolder(role_id=role_id, folder_id=f) for f in set(body.folder_ids))
    await session.flush()
    audit.record(session, principal, "create", "role", role_id, body.model_dump(mode="json"))
    return role_out(await _reload(session, principal, role_id))


async def _reload(session: AsyncSession, principal: Principal, role_id: uuid.UUID) -> Role:
    stmt = roles_query(principal).where(Role.id == role_id).execution_options(populate_existing=True)
    return (await session.execute(stmt)).scalar_one()


async def update_role(
    session: AsyncSession, principal: Principal, role_id: uuid.UUID, body: RoleUpdate
) -> RoleOut:
    role = await get_role(session, principal, role_id, lock=True)
    if role.builtin:
        raise Conflict(f"{role.name!r} is a built-in role and cannot be changed")
    changes = body.model_dump(mode="json", exclude_unset=True)
    perms = (
        _pairs(body.permissions)
        if body.permissions is not None
        else {(p.object, p.action) for p in role.permissions}
    )
    all_folders = body.all_folders if body.all_folders is not None else role.all_folders
    if body.folder_ids is not None:
        folder_ids = list(body.folder_ids)
    elif body.all_folders:
        folder_ids = []  # all folders now: the list no longer means anything
    else:
        folder_ids = [f.folder_id for f in role.folders]
    if body.all_folders is None and role.all_folders and body.folder_ids:
        # Valid as a request; it is the role's current state that makes the folders meaningless.
        raise Conflict(
            "the role sees every folder: give all_folders=false with folder_ids", field="folder_ids"
        )
    _check_folder_choice(all_folders, folder_ids)
    _check_within(principal, perms, all_folders, set(folder_ids), "permissions", "the role")
    # Nor may a caller change a role that reaches further than the caller does.
    check_may_grant(principal, [role], "id")
    await _check_folders(session, principal, folder_ids)
    if body.name is not None and body.name != role.name:
        await _name_free(session, principal, body.name, role.id)
        role.name = body.name
    if body.description is not None:
        role.description = body.description
    role.all_folders = all_folders
    role.updated_at = datetime.now(UTC)
    await _flush(session, role.name)
    # Replace the rows outright (not through the loaded collections), so the same (object, action)
    # given again is not inserted before its old row is deleted.
    await session.execute(sa.delete(RolePermission).where(RolePermission.role_id == role.id))
    await session.execute(sa.delete(RoleFolder).where(RoleFolder.role_id == role.id))
    session.add_all(RolePermission(role_id=role.id, object=o, action=a) for o, a in perms)
    session.add_all(RoleFolder(role_id=role.id, folder_id=f) for f in set(folder_ids))
    await session.flush()
    audit.record(session, principal, "update", "role", role.id, changes)
    return role_out(await _reload(session, principal, role.id))


async def delete_role(
    session: AsyncSession, principal: Principal, role_id: uuid.UUID, *, missing_ok: bool = False
) -> None:
    try:
        role = await get_role(session, principal, role_id, lock=True)
    except NotFound:
        if missing_ok:
            return
        raise
    if role.builtin:
        raise Conflict(f"{role.name!r} is a built-in role and cannot be deleted")
    check_may_grant(principal, [role], "id")
    holders = (
        await session.execute(
            sa.select(sa.func.count()).select_from(UserRole).where(UserRole.role_id == role.id)
        )
    ).scalar_one()
    if holders:
        raise Conflict(f"role {role.name!r} is held by {holders} user(s); take it from them first")
    await session.execute(sa.delete(Role).where(Role.id == role.id))
    audit.record(session, principal, "delete", "role", role.id, {"name": role.name})
