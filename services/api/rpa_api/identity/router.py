"""Identity provider endpoints: an account's LDAP directories and OpenID providers, configured by its
administrators.

Reading needs ``accounts:read``, changing ``accounts:update``. Secrets (bind password, client secret) are write-only:
the answers say ``has_bind_password`` / ``has_client_secret`` and nothing more.
"""

from __future__ import annotations

import uuid
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Response
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal, Transaction, require
from rpa_api.identity import schemas, service
from rpa_common.models import IdentityProvider
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O

router = APIRouter()

Read = Annotated[Principal, Depends(require(O.ACCOUNTS, A.READ))]
Admin = Annotated[Principal, Depends(require(O.ACCOUNTS, A.UPDATE))]


@router.post(
    "/identity-providers",
    status_code=201,
    summary="Add an LDAP directory or an OpenID provider to log in with",
    responses={409: {}},
)
async def create_provider(
    body: schemas.ProviderCreate, tx: Transaction, principal: Admin
) -> schemas.ProviderOut:
    provider_id = uuid.uuid4()

    async def work(session: AsyncSession) -> schemas.ProviderOut:
        return service.to_out(await service.create(session, tx.ctx.settings, principal, provider_id, body))

    return await tx.run(work)


@router.get("/identity-providers", summary="The account's identity providers")
async def list_providers(tx: Transaction, principal: Read) -> list[schemas.ProviderOut]:
    async def work(session: AsyncSession) -> list[schemas.ProviderOut]:
        rows = (
            await session.execute(
                sa.select(IdentityProvider)
                .where(IdentityProvider.account_id == principal.account_id)
                .order_by(IdentityProvider.name)
            )
        ).scalars()
        return [service.to_out(r) for r in rows]

    return await tx.read(work)


@router.get("/identity-providers/{provider_id:uuid}", summary="One identity provider")
async def get_provider(provider_id: uuid.UUID, tx: Transaction, principal: Read) -> schemas.ProviderOut:
    async def work(session: AsyncSession) -> schemas.ProviderOut:
        return service.to_out(await service.get(session, principal.account_id, provider_id))

    return await tx.read(work)


@router.patch(
    "/identity-providers/{provider_id:uuid}", summary="Change an identity provider", responses={409: {}}
)
async def update_provider(
    provider_id: uuid.UUID, body: schemas.ProviderUpdate, tx: Transaction, principal: Admin
) -> schemas.ProviderOut:
    async def work(session: AsyncSession) -> schemas.ProviderOut:
        return service.to_out(await service.update(session, tx.ctx.settings, principal, provider_id, body))

    return await tx.run(work)


@router.delete(
    "/identity-providers/{provider_id:uuid}", status_code=204, summary="Remove an identity provider"
)
async def delete_provider(provider_id: uuid.UUID, tx: Transaction, principal: Admin) -> Response:
    async def work(session: AsyncSession) -> None:
        await service.delete(session, principal, provider_id)

    await tx.run(work)
    return Response(status_code=204)
