"""Account endpoints: the caller's account, and creating accounts (installation administrators)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, status
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.accounts import service
from rpa_api.accounts.schemas import AccountCreate, AccountCreated, AccountOut, AccountUpdate
from rpa_api.deps import Principal, Transaction, require
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O
from rpa_common.security import hash_password

router = APIRouter()

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


@router.get("/accounts/current", response_model=AccountOut, summary="The caller's account")
async def get_current(
    tx: Transaction, principal: Annotated[Principal, Depends(require(O.ACCOUNTS, A.READ))]
) -> AccountOut:
    async def work(session: AsyncSession) -> AccountOut:
        return AccountOut.model_validate(await service.current(session, principal))

    return await tx.read(work)


@router.patch("/accounts/current", response_model=AccountOut, summary="Change the caller's account")
async def update_current(
    body: AccountUpdate,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.ACCOUNTS, A.UPDATE))],
) -> AccountOut:
    async def work(session: AsyncSession) -> AccountOut:
        return AccountOut.model_validate(await service.update_current(session, principal, body))

    return await tx.run(work)


@router.post(
    "/accounts",
    response_model=AccountCreated,
    status_code=status.HTTP_201_CREATED,
    summary="Create an account with its built-in roles and first Administrator",
    responses={403: _PROBLEM, 409: _PROBLEM, 422: _PROBLEM},
)
async def create_account(
    body: AccountCreate,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.ACCOUNTS, A.CREATE))],
) -> AccountCreated:
    """Only an Administrator of the account named ``default`` may do this.

    The installation has no level above accounts; ``default`` (made at first start by
    ``rpa-api bootstrap``) stands for it. Administrators of other accounts manage only their own,
    so a tenant cannot create tenants.
    """
    account_id, admin_id = uuid.uuid4(), uuid.uuid4()
    password_hash = await asyncio.to_thread(hash_password, body.admin.password.get_secret_value())

    async def work(session: AsyncSession) -> AccountCreated:
        return await service.create_account(session, principal, account_id, admin_id, body, password_hash)

    return await tx.run(work)
