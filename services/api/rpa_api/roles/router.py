"""Role endpoints: list, read, create, change, delete, and the catalogue of objects and actions."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response, status
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal, Transaction, require
from rpa_api.kit.pagination import Page, PageParams, paginate, sorted_by
from rpa_api.roles import service
from rpa_api.roles.schemas import Catalogue, RoleCreate, RoleOut, RoleUpdate
from rpa_common.models import Role
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O

router = APIRouter()

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


@router.get(
    "/roles/catalogue", response_model=Catalogue, summary="Every object and action a permission names"
)
async def catalogue(principal: Annotated[Principal, Depends(require(O.ROLES, A.READ))]) -> Catalogue:
    return Catalogue(objects=list(O), actions=list(A))


@router.get("/roles", response_model=Page[RoleOut], summary="Roles of the account")
async def list_roles(
    tx: Transaction,
    paging: Annotated[PageParams, Depends(sorted_by("name", "created_at", "updated_at"))],
    principal: Annotated[Principal, Depends(require(O.ROLES, A.READ))],
    name: Annotated[str | None, Query(max_length=100, description="Roles whose name contains this")] = None,
    builtin: Annotated[bool | None, Query(description="Only built-in (true) or custom (false) roles")] = None,
) -> Page[RoleOut]:
    async def work(session: AsyncSession) -> Page[RoleOut]:
        stmt = service.roles_query(principal)
        if name:
            stmt = stmt.where(Role.name.contains(name, autoescape=True))
        if builtin is not None:
            stmt = stmt.where(Role.builtin.is_(builtin))
        rows, total = await paginate(
            session,
            stmt,
            paging,
            sortable={"name": Role.name, "created_at": Role.created_at, "updated_at": Role.updated_at},
            default_sort="-created_at",
        )
        return Page[RoleOut](
            items=[service.role_out(r) for r in rows], total=total, limit=paging.limit, offset=paging.offset
        )

    return await tx.read(work)


@router.get("/roles/{role_id:uuid}", response_model=RoleOut, responses={404: _PROBLEM})
async def get_role(
    role_id: uuid.UUID, tx: Transaction, principal: Annotated[Principal, Depends(require(O.ROLES, A.READ))]
) -> RoleOut:
    async def work(session: AsyncSession) -> RoleOut:
        return service.role_out(await service.get_role(session, principal, role_id))

    return await tx.read(work)


@router.post(
    "/roles",
    response_model=RoleOut,
    status_code=status.HTTP_201_CREATED,
    responses={403: _PROBLEM, 404: _PROBLEM, 409: _PROBLEM, 422: _PROBLEM},
)
async def create_role(
    body: RoleCreate, tx: Transaction, principal: Annotated[Principal, Depends(require(O.ROLES, A.CREATE))]
) -> RoleOut:
    role_id = uuid.uuid4()

    async def work(session: AsyncSession) -> RoleOut:
        return await service.create_role(session, principal, role_id, body)

    return await tx.run(work)


@router.patch("/roles/{role_id:uuid}", response_model=RoleOut, responses={404: _PROBLEM, 409: _PROBLEM})
async def update_role(
    role_id: uuid.UUID,
    body: RoleUpdate,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.ROLES, A.UPDATE))],
) -> RoleOut:
    async def work(session: AsyncSession) -> RoleOut:
        return await service.update_role(session, principal, role_id, body)

    return await tx.run(work)


@router.delete(
    "/roles/{role_id:uuid}", status_code=status.HTTP_204_NO_CONTENT, responses={404: _PROBLEM, 409: _PROBLEM}
)
async def delete_role(
    role_id: uuid.UUID, tx: Transaction, principal: Annotated[Principal, Depends(require(O.ROLES, A.DELETE))]
) -> Response:
    # On a re-run after a commit that may have happened, a role already gone was deleted by us.
    await tx.run_aware(
        lambda session, rerun: service.delete_role(session, principal, role_id, missing_ok=rerun)
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
