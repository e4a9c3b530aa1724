"""Access folders as every folder-scoped domain checks them (robots, groups, processes...)."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal
from rpa_api.kit.names import name_taken
from rpa_common.errors import Conflict, Forbidden, NotFound
from rpa_common.models import AccessFolder


async def check_folder(session: AsyncSession, principal: Principal, folder_id: uuid.UUID | None) -> None:
    """``folder_id`` names a folder of the caller's account that the caller may use."""
    if folder_id is not None:
        exists = await session.scalar(
            sa.select(AccessFolder.id).where(
                AccessFolder.id == folder_id, AccessFolder.account_id == principal.account_id
            )
        )
        if exists is None:
            raise NotFound(f"folder {folder_id} does not exist", field="folder_id")
    if not principal.may_use_folder(folder_id):
        raise Forbidden("your roles do not give access to this folder", field="folder_id")


async def check_name_and_folder(
    session: AsyncSession, principal: Principal, obj: Any, fields: dict[str, Any], what: str
) -> None:
    """PATCH checks of an object named uniquely in its account, in a folder (if its model has one).

    A new ``name`` taken by another object of the account is a 409 ``{what} named '...' already
    exists``; a new ``folder_id`` must pass ``check_folder``. ``fields`` is
    ``body.model_dump(exclude_unset=True)``.
    """
    model = type(obj)
    if (
        "name" in fields
        and fields["name"] != obj.name
        and await name_taken(
            session, model.name, fields["name"], model.account_id == principal.account_id, but=obj.id
        )
    ):
        raise Conflict(f"{what} named {fields['name']!r} already exists", field="name")
    if "folder_id" in fields and fields["folder_id"] != obj.folder_id:
        await check_folder(session, principal, fields["folder_id"])


async def check_visible(
    session: AsyncSession, principal: Principal, model: Any, ident: uuid.UUID, kind: str, field: str
) -> None:
    """``ident`` is a ``model`` row (a robot, a robot group...) of the caller's account in a folder the
    caller sees; otherwise 404 ``{kind} {ident} does not exist`` naming ``field``."""
    found = await session.scalar(
        sa.select(model.id).where(
            model.id == ident,
            model.account_id == principal.account_id,
            principal.folder_clause(model.folder_id),
        )
    )
    if found is None:
        raise NotFound.of(kind, ident, field=field)
