"""Access folders as every folder-scoped domain checks them (robots, groups, processes...)."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal
from rpa_common.errors import Forbidden, NotFound
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
