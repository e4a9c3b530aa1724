"""Access folders of an account. A caller whose roles are limited to some folders sees only those.

A folder that still labels objects (robots, processes, queues...) cannot be deleted (409): deleting
it would silently hand those objects to every role that sees "all folders" and hide them from the
roles limited to it. Roles that list it simply lose it.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal
from rpa_api.folders.schemas import FolderCreate, FolderUpdate
from rpa_api.kit import audit
from rpa_api.kit.lookup import get_owned
from rpa_common.errors import Conflict, NotFound
from rpa_common.models import AccessFolder, Base, RoleFolder


def folders_query(principal: Principal) -> sa.Select[AccessFolder]:
    return sa.select(AccessFolder).where(
        AccessFolder.account_id == principal.account_id, principal.folder_clause(AccessFolder.id)
    )


async def get_folder(
    session: AsyncSession, principal: Principal, folder_id: uuid.UUID, *, lock: bool = False
) -> AccessFolder:
    return await get_owned(
        session, folders_query(principal).where(AccessFolder.id == folder_id), "folder", folder_id, lock=lock
    )


async def _name_free(
    session: AsyncSession, principal: Principal, name: str, except_id: uuid.UUID | None
) -> None:
    # Case-insensitive on both databases, as MariaDB's collation is.
    stmt = sa.select(AccessFolder.id).where(
        AccessFolder.account_id == principal.account_id, sa.func.lower(AccessFolder.name) == name.lower()
    )
    if except_id is not None:
        stmt = stmt.where(AccessFolder.id != except_id)
    if (await session.execute(stmt.limit(1))).first() is not None:
        raise Conflict(f"a folder named {name!r} already exists", field="name")


async def _flush(session: AsyncSession, name: str) -> None:
    try:
        await session.flush()
    except IntegrityError:  # a concurrent create of the same name won the race
        raise Conflict(f"a folder named {name!r} already exists", field="name") from None


async def create_folder(
    session: AsyncSession, principal: Principal, folder_id: uuid.UUID, body: FolderCreate
) -> AccessFolder:
    existing = await session.get(AccessFolder, folder_id)
    if existing is not None:  # a re-run after a commit that did happen
        return existing
    await _name_free(session, principal, body.name, None)
    folder = AccessFolder(
        id=folder_id, account_id=principal.account_id, name=body.name, description=body.description
    )
    session.add(folder)
    await _flush(session, body.name)
    audit.record(session, principal, "create", "folder", folder_id, body.model_dump())
    return folder


async def update_folder(
    session: AsyncSession, principal: Principal, folder_id: uuid.UUID, body: FolderUpdate
) -> AccessFolder:
    folder = await get_folder(session, principal, folder_id, lock=True)
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    if body.name is not None and body.name != folder.name:
        await _name_free(session, principal, body.name, folder.id)
        folder.name = body.name
    if body.description is not None:
        folder.description = body.description
    await _flush(session, folder.name)
    audit.record(session, principal, "update", "folder", folder.id, changes)
    return folder


def _labelled_columns() -> list[sa.Column[object]]:
    """Every column that labels an object with a folder (role_folder excepted: see the module doc)."""
    out = []
    for table in Base.metadata.sorted_tables:
        if table.name == RoleFolder.__tablename__:
            continue
        for column in table.columns:
            if any(fk.column.table.name == AccessFolder.__tablename__ for fk in column.foreign_keys):
                out.append(column)
    return out


async def delete_folder(
    session: AsyncSession, principal: Principal, folder_id: uuid.UUID, *, missing_ok: bool = False
) -> None:
    try:
        folder = await get_folder(session, principal, folder_id, lock=True)
    except NotFound:
        if missing_ok:
            return
        raise
    for column in _labelled_columns():
        used = (await session.execute(sa.select(column).where(column == folder.id).limit(1))).first()
        if used is not None:
            raise Conflict(
                f"folder {folder.name!r} still labels {column.table.name} objects; move them first"
            )
    await session.execute(sa.delete(AccessFolder).where(AccessFolder.id == folder.id))
    audit.record(session, principal, "delete", "folder", folder.id, {"name": folder.name})
