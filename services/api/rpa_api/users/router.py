"""User endpoints: list, read, create, change, set roles, reset password, delete."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Response, status
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal, Transaction, require
from rpa_api.kit.pagination import Page, PageParams, paginate, sorted_by
from rpa_api.users import service
from rpa_api.users.schemas import PasswordReset, UserCreate, UserOut, UserRoles, UserUpdate
from rpa_common.models import User, UserRole
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O
from rpa_common.security import hash_password

router = APIRouter()

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


@router.get("/users", response_model=Page[UserOut], summary="Users of the account")
async def list_users(
    tx: Transaction,
    paging: Annotated[
        PageParams, Depends(sorted_by("username", "display_name", "created_at", "last_login_at"))
    ],
    principal: Annotated[Principal, Depends(require(O.USERS, A.READ))],
    username: Annotated[str | None, Query(max_length=150, description="Usernames containing this")] = None,
    is_active: Annotated[
        bool | None, Query(description="Only active (true) or inactive (false) users")
    ] = None,
    role_id: Annotated[uuid.UUID | None, Query(description="Users holding this role")] = None,
) -> Page[UserOut]:
    async def work(session: AsyncSession) -> Page[UserOut]:
        stmt = service.users_query(principal)
        if username:
            stmt = stmt.where(User.username.contains(username, autoescape=True))
        if is_active is not None:
            stmt = stmt.where(User.is_active.is_(is_active))
        if role_id is not None:
            stmt = stmt.where(sa.exists().where(UserRole.user_id == User.id, UserRole.role_id == role_id))
        rows, total = await paginate(
            session,
            stmt,
            paging,
            sortable={
                "username": User.username,
                "display_name": User.display_name,
                "created_at": User.created_at,
                "last_login_at": User.last_login_at,
            },
            default_sort="-created_at",
        )
        items = await service.users_out(session, rows)
        return Page[UserOut](items=items, total=total, limit=paging.limit, offset=paging.offset)

    return await tx.read(work)


@router.get("/users/{user_id:uuid}", response_model=UserOut, responses={404: _PROBLEM})
async def get_user(
    user_id: uuid.UUID, tx: Transaction, principal: Annotated[Principal, Depends(require(O.USERS, A.READ))]
) -> UserOut:
    async def work(session: AsyncSession) -> UserOut:
        return (await service.users_out(session, [await service.get_user(session, principal, user_id)]))[0]

    return await tx.read(work)


@router.post(
    "/users",
    response_model=UserOut,
    status_code=status.HTTP_201_CREATED,
    responses={403: _PROBLEM, 404: _PROBLEM, 409: _PROBLEM, 422: _PROBLEM},
)
async def create_user(
    body: UserCreate, tx: Transaction, principal: Annotated[Principal, Depends(require(O.USERS, A.CREATE))]
) -> UserOut:
    user_id = uuid.uuid4()
    # argon2 is CPU-bound: hashed once, off the event loop, outside the (re-runnable) transaction.
    password_hash = await asyncio.to_thread(hash_password, body.password.get_secret_value())

    async def work(session: AsyncSession) -> UserOut:
        return await service.create_user(session, principal, user_id, body, password_hash)

    return await tx.run(work)


@router.patch(
    "/users/{user_id:uuid}", response_model=UserOut, responses={403: _PROBLEM, 404: _PROBLEM, 409: _PROBLEM}
)
async def update_user(
    user_id: uuid.UUID,
    body: UserUpdate,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.USERS, A.UPDATE))],
) -> UserOut:
    async def work(session: AsyncSession) -> UserOut:
        return await service.update_user(session, principal, user_id, body)

    return await tx.run(work)


@router.put(
    "/users/{user_id:uuid}/roles",
    response_model=UserOut,
    summary="Replace the roles of a user",
    responses={403: _PROBLEM, 404: _PROBLEM, 409: _PROBLEM},
)
async def set_roles(
    user_id: uuid.UUID,
    body: UserRoles,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.USERS, A.UPDATE))],
) -> UserOut:
    async def work(session: AsyncSession) -> UserOut:
        return await service.update_user(session, principal, user_id, UserUpdate(role_ids=body.role_ids))

    return await tx.run(work)


@router.post(
    "/users/{user_id:uuid}/password",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Set a new password; every token of the user stops working",
    responses={403: _PROBLEM, 404: _PROBLEM, 422: _PROBLEM},
)
async def reset_password(
    user_id: uuid.UUID,
    body: PasswordReset,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.USERS, A.UPDATE))],
) -> Response:
    password_hash = await asyncio.to_thread(hash_password, body.password.get_secret_value())

    async def work(session: AsyncSession) -> None:
        await service.reset_password(session, principal, user_id, password_hash)

    await tx.run(work)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete(
    "/users/{user_id:uuid}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={403: _PROBLEM, 404: _PROBLEM, 409: _PROBLEM},
)
async def delete_user(
    user_id: uuid.UUID, tx: Transaction, principal: Annotated[Principal, Depends(require(O.USERS, A.DELETE))]
) -> Response:
    # On a re-run after a commit that may have happened, a user already gone was deleted by us.
    await tx.run_aware(
        lambda session, rerun: service.delete_user(session, principal, user_id, missing_ok=rerun)
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
