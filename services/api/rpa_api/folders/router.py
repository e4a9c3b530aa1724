"""Access folder endpoints: list, read, create, rename, delete."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response, status
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal, Transaction, require
from rpa_api.folders import service
from rpa_api.folders.schemas import FolderCreate, FolderOut, FolderUpdate
from rpa_api.kit.pagination import Page, PageParams, paginate, sorted_by
from rpa_common.models import AccessFolder
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O

router = APIRouter()

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


@router.get("/folders", response_model=Page[FolderOut], summary="Folders the caller sees")
async def list_folders(
    tx: Transaction,
    paging: Annotated[PageParams, Depends(sorted_by("name", "created_at"))],
    principal: Annotated[Principal, Depends(require(O.FOLDERS, A.READ))],
    name: Annotated[str | None, Query(max_length=100, description="Folders whose name contains this")] = None,
) -> Page[FolderOut]:
    async def work(session: AsyncSession) -> Page[FolderOut]:
        stmt = service.folders_query(principal)
        if name:
            stmt = stmt.where(AccessFolder.name.contains(name, autoescape=True))
        rows, total = await paginate(
            session,
            stmt,
            paging,
            sortable={"name": AccessFolder.name, "created_at": AccessFolder.created_at},
            default_sort="-created_at",
        )
        return Page[FolderOut](
            items=[FolderOut.model_validate(r) for r in rows],
            total=total,
            limit=paging.limit,
            offset=paging.offset,
        )

    return await tx.read(work)


@router.get("/folders/{folder_id:uuid}", response_model=FolderOut, responses={404: _PROBLEM})
async def get_folder(
    folder_id: uuid.UUID,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.FOLDERS, A.READ))],
) -> FolderOut:
    async def work(session: AsyncSession) -> FolderOut:
        return FolderOut.model_validate(await service.get_folder(session, principal, folder_id))

    return await tx.read(work)


@router.post(
    "/folders",
    response_model=FolderOut,
    status_code=status.HTTP_201_CREATED,
    responses={409: _PROBLEM, 422: _PROBLEM},
)
async def create_folder(
    body: FolderCreate,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.FOLDERS, A.CREATE))],
) -> FolderOut:
    folder_id = uuid.uuid4()

    async def work(session: AsyncSession) -> FolderOut:
        return FolderOut.model_validate(await service.create_folder(session, principal, folder_id, body))

    return await tx.run(work)


@router.patch("/folders/{folder_id:uuid}", response_model=FolderOut, responses={404: _PROBLEM, 409: _PROBLEM})
async def update_folder(
    folder_id: uuid.UUID,
    body: FolderUpdate,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.FOLDERS, A.UPDATE))],
) -> FolderOut:
    async def work(session: AsyncSession) -> FolderOut:
        return FolderOut.model_validate(await service.update_folder(session, principal, folder_id, body))

    return await tx.run(work)


@router.delete(
    "/folders/{folder_id:uuid}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: _PROBLEM, 409: _PROBLEM},
)
async def delete_folder(
    folder_id: uuid.UUID,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.FOLDERS, A.DELETE))],
) -> Response:
    # On a re-run after a commit that may have happened, a folder already gone was deleted by us.
    await tx.run_aware(
        lambda session, rerun: service.delete_folder(session, principal, folder_id, missing_ok=rerun)
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
