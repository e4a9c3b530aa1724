"""External applications (OAuth2 clients): create (the secret is shown once), list, read, update
(rename, disable), rotate the secret, delete. Managed with the API-key permissions: an app is a
credential of its creator; whoever may change users (users:update) sees and manages every app of the
account. The token endpoint for them is ``POST /auth/token`` with ``grant_type=client_credentials``.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Response, status
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal, Transaction, require
from rpa_api.external_apps import service
from rpa_api.external_apps.schemas import (
    ExternalAppCreate,
    ExternalAppOut,
    ExternalAppSecret,
    ExternalAppUpdate,
)
from rpa_api.kit.pagination import Page, PageParams, paginate, sorted_by
from rpa_common.errors import Forbidden
from rpa_common.models import ExternalApp
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O

router = APIRouter(prefix="/external-apps")

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


def _manage_all(principal: Principal) -> bool:
    return principal.can(O.USERS, A.UPDATE)


def _with_secret(row: ExternalApp, secret: str) -> ExternalAppSecret:
    return ExternalAppSecret.model_validate(
        {**ExternalAppOut.model_validate(row).model_dump(), "client_secret": secret}
    )


@router.post(
    "",
    response_model=ExternalAppSecret,
    status_code=status.HTTP_201_CREATED,
    summary="Create an external application (OAuth2 client); its secret is shown in this answer only",
    responses={404: _PROBLEM, 422: _PROBLEM},
)
async def create_external_app(
    body: ExternalAppCreate,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.API_KEYS, A.CREATE))],
) -> ExternalAppSecret:
    row, secret = await service.create(tx, principal, body)
    return _with_secret(row, secret)


@router.get(
    "",
    response_model=Page[ExternalAppOut],
    summary="The caller's external applications (all of the account's with all=true, for user managers)",
)
async def list_external_apps(
    tx: Transaction,
    paging: Annotated[PageParams, Depends(sorted_by("created_at", "name"))],
    principal: Annotated[Principal, Depends(require(O.API_KEYS, A.READ))],
    all: Annotated[bool, Query(description="Every app of the account (needs users:update)")] = False,
    is_active: Annotated[
        bool | None, Query(description="Only enabled (true) or disabled (false) apps")
    ] = None,
) -> Page[ExternalAppOut]:
    async def work(session: AsyncSession) -> Page[ExternalAppOut]:
        if all and not _manage_all(principal):
            raise Forbidden("listing every app of the account needs users:update")
        stmt = sa.select(ExternalApp).where(service.visible(principal, all))
        if is_active is not None:
            stmt = stmt.where(ExternalApp.is_active.is_(is_active))
        rows, total = await paginate(
            session,
            stmt,
            paging,
            sortable={"created_at": ExternalApp.created_at, "name": ExternalApp.name},
            default_sort="-created_at",
        )
        return Page[ExternalAppOut](
            items=[ExternalAppOut.model_validate(r) for r in rows],
            total=total,
            limit=paging.limit,
            offset=paging.offset,
        )

    return await tx.read(work)


@router.get(
    "/{app_id:uuid}",
    response_model=ExternalAppOut,
    summary="One external application",
    responses={404: _PROBLEM},
)
async def get_external_app(
    app_id: uuid.UUID,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.API_KEYS, A.READ))],
) -> ExternalAppOut:
    return ExternalAppOut.model_validate(await service.get(tx, principal, app_id, _manage_all(principal)))


@router.patch(
    "/{app_id:uuid}",
    response_model=ExternalAppOut,
    summary="Rename, disable or enable an external application (disabling ends its tokens at once)",
    responses={404: _PROBLEM, 422: _PROBLEM},
)
async def update_external_app(
    app_id: uuid.UUID,
    body: ExternalAppUpdate,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.API_KEYS, A.CREATE))],
) -> ExternalAppOut:
    return ExternalAppOut.model_validate(
        await service.update(tx, principal, app_id, body, _manage_all(principal))
    )


@router.post(
    "/{app_id:uuid}/rotate-secret",
    response_model=ExternalAppSecret,
    summary="A new secret for an external application (shown once); the old one and its tokens stop working",
    responses={404: _PROBLEM},
)
async def rotate_external_app_secret(
    app_id: uuid.UUID,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.API_KEYS, A.CREATE))],
) -> ExternalAppSecret:
    row, secret = await service.rotate_secret(tx, principal, app_id, _manage_all(principal))
    return _with_secret(row, secret)


@router.delete(
    "/{app_id:uuid}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete an external application; its tokens stop working at once",
    responses={404: _PROBLEM},
)
async def delete_external_app(
    app_id: uuid.UUID,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.API_KEYS, A.DELETE))],
) -> Response:
    await service.delete(tx, principal, app_id, _manage_all(principal))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
