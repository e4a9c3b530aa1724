"""Resource group and resource endpoints, values per scope, and the audited credential reveal.

After a change commits, ``ResourceChanged`` (ids and name only, never a value) goes out on NATS so
gateways push the new value to the robots watching the resource.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Ctx, Principal, Transaction, require
from rpa_api.kit.names import contains
from rpa_api.kit.pagination import Page, PageParams, paginate, sorted_by
from rpa_api.resources import schemas, service
from rpa_common.models import Resource, ResourceGroup
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O
from rpa_common.models.enums import ResourceKind, ResourceScope
from rpa_common.nats import subjects
from rpa_common.nats.messages import ResourceChanged
from rpa_common.service import ServiceContext

router = APIRouter()

_GROUP_SORTABLE = {
    "name": ResourceGroup.name,
    "created_at": ResourceGroup.created_at,
    "updated_at": ResourceGroup.updated_at,
}
_SORTABLE = {
    "name": Resource.name,
    "kind": Resource.kind,
    "created_at": Resource.created_at,
    "updated_at": Resource.updated_at,
}

Read = Annotated[Principal, Depends(require(O.RESOURCES, A.READ))]
Create = Annotated[Principal, Depends(require(O.RESOURCES, A.CREATE))]
Update = Annotated[Principal, Depends(require(O.RESOURCES, A.UPDATE))]
Delete = Annotated[Principal, Depends(require(O.RESOURCES, A.DELETE))]
Reveal = Annotated[Principal, Depends(require(O.CREDENTIALS, A.REVEAL))]


async def _changed(
    ctx: ServiceContext,
    account_id: uuid.UUID,
    resource_id: uuid.UUID,
    name: str,
    change: Literal["created", "updated", "deleted"] = "updated",
    old_name: str | None = None,
) -> None:
    message = ResourceChanged(
        account_id=account_id,
        resource_id=resource_id,
        name=name,
        old_name=old_name if old_name != name else None,
        change=change,
    )
    await ctx.publish(subjects.RESOURCE_CHANGED, message.encode())


# Resource groups ------------------------------------------------------------------------------------


@router.post("/resource-groups", status_code=201, summary="Create a resource group", responses={409: {}})
async def create_group(
    body: schemas.ResourceGroupCreate, tx: Transaction, principal: Create
) -> schemas.ResourceGroupOut:
    group_id = uuid.uuid4()

    async def work(session: AsyncSession) -> schemas.ResourceGroupOut:
        group = await service.create_group(session, principal, group_id, body)
        counts = await service.resource_counts(session, [group.id])
        return service.group_out(group, counts.get(group.id, 0))

    return await tx.run(work)


@router.get("/resource-groups", summary="List resource groups")
async def list_groups(
    tx: Transaction,
    paging: Annotated[PageParams, Depends(sorted_by(*_GROUP_SORTABLE))],
    principal: Read,
    name: Annotated[str | None, Query(max_length=100, description="Name contains (any case)")] = None,
    folder_id: uuid.UUID | None = None,
) -> Page[schemas.ResourceGroupOut]:
    async def work(session: AsyncSession) -> Page[schemas.ResourceGroupOut]:
        stmt = service.groups_query(principal)
        if name:
            stmt = stmt.where(contains(ResourceGroup.name, name))
        if folder_id is not None:
            stmt = stmt.where(ResourceGroup.folder_id == folder_id)
        rows, total = await paginate(
            session, stmt, paging, _GROUP_SORTABLE, "name", columns_of=schemas.ResourceGroupOut
        )
        counts = await service.resource_counts(session, (g.id for g in rows))
        return Page[schemas.ResourceGroupOut](
            items=[service.group_out(g, counts.get(g.id, 0)) for g in rows],
            total=total,
            limit=paging.limit,
            offset=paging.offset,
        )

    return await tx.read(work)


@router.get("/resource-groups/{group_id:uuid}", summary="A resource group")
async def get_group(group_id: uuid.UUID, tx: Transaction, principal: Read) -> schemas.ResourceGroupOut:
    async def work(session: AsyncSession) -> schemas.ResourceGroupOut:
        group = await service.get_group(session, principal, group_id)
        counts = await service.resource_counts(session, [group.id])
        return service.group_out(group, counts.get(group.id, 0))

    return await tx.read(work)


@router.patch("/resource-groups/{group_id:uuid}", summary="Change a resource group", responses={409: {}})
async def update_group(
    group_id: uuid.UUID, body: schemas.ResourceGroupUpdate, tx: Transaction, principal: Update
) -> schemas.ResourceGroupOut:
    async def work(session: AsyncSession) -> schemas.ResourceGroupOut:
        group = await service.update_group(session, principal, group_id, body)
        counts = await service.resource_counts(session, [group.id])
        return service.group_out(group, counts.get(group.id, 0))

    return await tx.run(work)


@router.delete(
    "/resource-groups/{group_id:uuid}",
    status_code=204,
    summary="Delete an empty resource group",
    responses={409: {"description": "the group still holds resources"}},
)
async def delete_group(group_id: uuid.UUID, tx: Transaction, principal: Delete) -> Response:
    await tx.run(lambda session: service.delete_group(session, principal, group_id))
    return Response(status_code=204)


# Resources ------------------------------------------------------------------------------------------


@router.post("/resources", status_code=201, summary="Create a resource (no value yet)", responses={409: {}})
async def create_resource(
    body: schemas.ResourceCreate, tx: Transaction, ctx: Ctx, principal: Create
) -> schemas.ResourceDetail:
    resource_id = uuid.uuid4()

    async def work(session: AsyncSession) -> schemas.ResourceDetail:
        resource = await service.create_resource(session, principal, resource_id, body)
        return await service.resource_detail(session, resource)

    out = await tx.run(work)
    await _changed(ctx, principal.account_id, out.id, out.name, "created")
    return out


@router.get("/resources", summary="List resources")
async def list_resources(
    tx: Transaction,
    paging: Annotated[PageParams, Depends(sorted_by(*_SORTABLE))],
    principal: Read,
    name: Annotated[str | None, Query(max_length=100, description="Name contains (any case)")] = None,
    group_id: uuid.UUID | None = None,
    kind: ResourceKind | None = None,
) -> Page[schemas.ResourceOut]:
    async def work(session: AsyncSession) -> Page[schemas.ResourceOut]:
        stmt = service.resources_query(principal)
        if name:
            stmt = stmt.where(contains(Resource.name, name))
        if group_id is not None:
            stmt = stmt.where(Resource.group_id == group_id)
        if kind is not None:
            stmt = stmt.where(Resource.kind == kind)
        rows, total = await paginate(session, stmt, paging, _SORTABLE, "name", columns_of=schemas.ResourceOut)
        return Page[schemas.ResourceOut](
            items=[schemas.ResourceOut.model_validate(r) for r in rows],
            total=total,
            limit=paging.limit,
            offset=paging.offset,
        )

    return await tx.read(work)


@router.get("/resources/{resource_id:uuid}", summary="A resource, with its values (never a password)")
async def get_resource(resource_id: uuid.UUID, tx: Transaction, principal: Read) -> schemas.ResourceDetail:
    async def work(session: AsyncSession) -> schemas.ResourceDetail:
        return await service.resource_detail(
            session, await service.get_resource(session, principal, resource_id)
        )

    return await tx.read(work)


@router.patch(
    "/resources/{resource_id:uuid}", summary="Rename, describe or move a resource", responses={409: {}}
)
async def update_resource(
    resource_id: uuid.UUID, body: schemas.ResourceUpdate, tx: Transaction, ctx: Ctx, principal: Update
) -> schemas.ResourceDetail:
    old: list[str] = []

    async def work(session: AsyncSession) -> schemas.ResourceDetail:
        resource, old_name = await service.update_resource(session, principal, resource_id, body)
        old[:] = [old_name]
        return await service.resource_detail(session, resource)

    out = await tx.run(work)
    await _changed(ctx, principal.account_id, out.id, out.name, "updated", old[0])
    return out


@router.delete(
    "/resources/{resource_id:uuid}", status_code=204, summary="Delete a resource and all its values"
)
async def delete_resource(resource_id: uuid.UUID, tx: Transaction, ctx: Ctx, principal: Delete) -> Response:
    resource = await tx.run(lambda session: service.delete_resource(session, principal, resource_id))
    await _changed(ctx, principal.account_id, resource.id, resource.name, "deleted")
    return Response(status_code=204)


# Values ---------------------------------------------------------------------------------------------


@router.get("/resources/{resource_id:uuid}/values", summary="The values of a resource per scope")
async def list_values(
    resource_id: uuid.UUID,
    tx: Transaction,
    principal: Read,
    scope: ResourceScope | None = None,
    expired: Annotated[
        bool | None, Query(description="Only credentials whose expiry has (not) passed")
    ] = None,
) -> list[schemas.ResourceValueOut]:
    async def work(session: AsyncSession) -> list[schemas.ResourceValueOut]:
        resource = await service.get_resource(session, principal, resource_id)
        return await service.list_values(session, resource, scope=scope, expired=expired)

    return await tx.read(work)


@router.put(
    "/resources/{resource_id:uuid}/values",
    summary="Set the value of one scope (all robots, a robot group or one robot)",
    responses={201: {"description": "the scope had no value: created"}, 409: {}},
)
async def set_value(
    resource_id: uuid.UUID,
    body: schemas.ResourceValueSet,
    tx: Transaction,
    ctx: Ctx,
    principal: Update,
    response: Response,
) -> schemas.ResourceValueOut:
    async def work(session: AsyncSession) -> tuple[schemas.ResourceValueOut, str, bool]:
        resource, value, created = await service.set_value(
            session, ctx.settings, principal, resource_id, body
        )
        return service.value_out(value), resource.name, created

    out, name, created = await tx.run(work)
    response.status_code = 201 if created else 200
    await _changed(ctx, principal.account_id, resource_id, name)
    return out


@router.get("/resources/{resource_id:uuid}/values/{value_id:uuid}", summary="One value (never a password)")
async def get_value(
    resource_id: uuid.UUID, value_id: uuid.UUID, tx: Transaction, principal: Read
) -> schemas.ResourceValueOut:
    async def work(session: AsyncSession) -> schemas.ResourceValueOut:
        resource = await service.get_resource(session, principal, resource_id)
        return service.value_out(await service.get_value(session, resource, value_id))

    return await tx.read(work)


@router.delete(
    "/resources/{resource_id:uuid}/values/{value_id:uuid}", status_code=204, summary="Delete a value"
)
async def delete_value(
    resource_id: uuid.UUID, value_id: uuid.UUID, tx: Transaction, ctx: Ctx, principal: Update
) -> Response:
    resource = await tx.run(lambda session: service.delete_value(session, principal, resource_id, value_id))
    await _changed(ctx, principal.account_id, resource.id, resource.name)
    return Response(status_code=204)


@router.post(
    "/resources/{resource_id:uuid}/values/{value_id:uuid}/reveal",
    summary="Reveal a credential's password (needs credentials:reveal; audited)",
    responses={409: {"description": "the resource is not a credential"}, 503: {}},
)
async def reveal(
    resource_id: uuid.UUID,
    value_id: uuid.UUID,
    tx: Transaction,
    ctx: Ctx,
    principal: Reveal,
    response: Response,
) -> schemas.CredentialRevealed:
    response.headers["Cache-Control"] = "no-store"
    return await tx.run(
        lambda session: service.reveal_value(session, ctx.settings, principal, resource_id, value_id)
    )
