"""License endpoints: install a key, list licenses with their seats, remove one."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Ctx, Principal, Transaction, require
from rpa_api.kit.pagination import Page, PageParams, paginate, sorted_by
from rpa_api.licenses import schemas, service
from rpa_common.models import License
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O

router = APIRouter()

_SORTABLE = {
    "name": License.name,
    "kind": License.kind,
    "expires_at": License.expires_at,
    "created_at": License.created_at,
}


@router.post(
    "/licenses",
    status_code=201,
    summary="Install a license key (verified against the issuer public keys)",
    responses={409: {"description": "the key is already installed"}},
    name="install",  # the operation ids: ``licenses_install`` (no "license" noun to strip)
)
async def install_license(
    body: schemas.LicenseInstall,
    ctx: Ctx,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.LICENSES, A.CREATE))],
) -> schemas.LicenseOut:
    document = service.verified(body.key, ctx.settings.license_public_keys)

    async def work(session: AsyncSession) -> schemas.LicenseOut:
        license_ = await service.install(session, principal, body, document)
        return (await service.outs(session, principal, [license_]))[0]

    return await tx.run(work)


@router.get("/licenses", summary="List licenses with capacity, assigned, in use and expiry", name="list")
async def list_licenses(
    tx: Transaction,
    paging: Annotated[PageParams, Depends(sorted_by(*_SORTABLE))],
    principal: Annotated[Principal, Depends(require(O.LICENSES, A.READ))],
) -> Page[schemas.LicenseOut]:
    async def work(session: AsyncSession) -> Page[schemas.LicenseOut]:
        rows, total = await paginate(session, service.licenses_query(principal), paging, _SORTABLE, "name")
        return Page[schemas.LicenseOut](
            items=await service.outs(session, principal, rows),
            total=total,
            limit=paging.limit,
            offset=paging.offset,
        )

    return await tx.read(work)


@router.get("/licenses/{license_id:uuid}", summary="A license with its seats", name="get")
async def get_license(
    license_id: uuid.UUID,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.LICENSES, A.READ))],
) -> schemas.LicenseOut:
    async def work(session: AsyncSession) -> schemas.LicenseOut:
        license_ = await service.get_license(session, principal, license_id)
        return (await service.outs(session, principal, [license_]))[0]

    return await tx.read(work)


@router.delete(
    "/licenses/{license_id:uuid}",
    status_code=204,
    summary="Remove a license (connected robots keep their seat until they reconnect)",
    name="delete",
)
async def delete_license(
    license_id: uuid.UUID,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.LICENSES, A.DELETE))],
) -> Response:
    await tx.run(lambda session: service.delete_license(session, principal, license_id))
    return Response(status_code=204)
