"""Auth endpoints: the OAuth2 password login, refresh-token rotation, revocation, ``/auth/me``, API keys.

The login, refresh and revoke endpoints are the only ones a caller reaches without a token (they are
how one gets a token), and ``/auth/me`` and ``/auth/logout-all`` act on the caller only: these need
an authenticated caller but no permission. Everything else requires a permission.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.auth import service
from rpa_api.auth.schemas import (
    AccountRef,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    MeFolder,
    MeOut,
    MeRole,
    MeUser,
    PermissionOut,
    TokenOut,
)
from rpa_api.deps import CurrentPrincipal, Principal, Transaction, require
from rpa_api.external_apps.schemas import ClientTokenOut
from rpa_api.external_apps.token import (
    GRANT_CLIENT_CREDENTIALS,
    GRANT_PASSWORD,
    TokenForm,
    client_credentials,
    oauth_error,
)
from rpa_api.kit.pagination import Page, PageParams, paginate, sorted_by
from rpa_common.errors import BadRequest, Forbidden, Unprocessable
from rpa_common.models import AccessFolder, ApiKey
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O
from rpa_common.service import problem

router = APIRouter()

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
# The token endpoint answers a client-credentials request's errors as RFC 6749 section 5.2 says.
_OAUTH2_ERROR: dict[str, Any] = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {"type": "string", "description": "The OAuth2 error code"},
                    "error_description": {"type": "string"},
                },
            }
        }
    }
}
# What _refresh_token_field accepts, stated in the schema.
_REFRESH_TOKEN = {"type": "string", "minLength": 1, "maxLength": 512}
_TOKEN_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["refresh_token"],
                    "properties": {"refresh_token": _REFRESH_TOKEN},
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["refresh_token"],
                    "properties": {"refresh_token": _REFRESH_TOKEN},
                }
            },
        },
    }
}


def _client(request: Request) -> service.Client:
    return service.Client(
        address=request.client.host if request.client else None,
        user_agent=(request.headers.get("user-agent") or "")[:500] or None,
    )


async def _refresh_token_field(request: Request) -> str:
    """``refresh_token`` from a form or a JSON body (OAuth2 clients send forms, SPAs often JSON)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    value: Any
    if ctype == "application/json" or ctype.endswith("+json"):
        try:
            doc = json.loads(await request.body() or b"null")
        except ValueError:
            raise BadRequest("the body is not valid JSON") from None
        value = doc.get("refresh_token") if isinstance(doc, dict) else None
    else:
        value = (await request.form()).get("refresh_token")
    if not isinstance(value, str) or not value or len(value) > 512:
        raise Unprocessable("a refresh token (a non-empty string) is required", field="refresh_token")
    return value


@router.post(
    "/auth/token",
    response_model=TokenOut | ClientTokenOut,
    summary="Log in with a username and password (OAuth2 password flow), or as an external application "
    "(grant_type=client_credentials)",
    responses={
        400: {
            **_OAUTH2_ERROR,
            "description": "OAuth2 error (invalid_request, invalid_scope, unsupported_grant_type)",
        },
        401: {
            **_OAUTH2_ERROR,
            "description": "Wrong password (problem+json) or invalid_client (OAuth2 error)",
        },
        429: {**_PROBLEM, "description": "Too many failed logins (see Retry-After)"},
    },
)
async def token(
    request: Request, form: Annotated[TokenForm, Depends()], tx: Transaction
) -> TokenOut | ClientTokenOut | JSONResponse:
    if form.grant_type == GRANT_CLIENT_CREDENTIALS:
        return await client_credentials(request, tx, form)
    if form.grant_type != GRANT_PASSWORD:
        return oauth_error(400, "unsupported_grant_type", "grant_type must be password or client_credentials")
    if not form.username:
        raise Unprocessable("a username is required", field="username")
    if not form.password:
        raise Unprocessable("a password is required", field="password")
    try:
        return await service.login(tx.ctx, tx, form.username, form.password, _client(request))
    except service.LoginThrottled as exc:
        resp = problem(exc.status, exc.title, exc.detail, instance=request.url.path, **exc.extra)
        resp.headers["Retry-After"] = str(exc.retry_after_s)
        return resp


@router.post(
    "/auth/refresh",
    response_model=TokenOut,
    summary="Trade a refresh token for a new pair (the old one is spent)",
    openapi_extra=_TOKEN_BODY,
    responses={401: _PROBLEM, 422: _PROBLEM},
)
async def refresh(request: Request, tx: Transaction) -> TokenOut:
    raw = await _refresh_token_field(request)
    return await service.refresh(tx.ctx, tx, raw, _client(request))


@router.post(
    "/auth/revoke",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke a refresh token and every token rotated from the same login",
    openapi_extra=_TOKEN_BODY,
    responses={422: _PROBLEM},
)
async def revoke(request: Request, tx: Transaction) -> Response:
    raw = await _refresh_token_field(request)
    await service.revoke(tx, raw, _client(request))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/auth/logout-all",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Invalidate every access and refresh token of the caller",
    responses={401: _PROBLEM},
)
async def logout_all(principal: CurrentPrincipal, tx: Transaction) -> Response:
    await service.logout_all(tx, principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me", response_model=MeOut, summary="The caller: account, user, roles, folders, permissions")
async def me_root(principal: CurrentPrincipal, tx: Transaction) -> Response:
    """What a user interface needs to shape itself: the caller's account, user, roles, the access
    folders it sees (ids and names, or ``"all"``) and its effective permissions (``can``: object to
    actions). ``/auth/me`` answers the same."""
    return await me(principal, tx)


@router.get("/auth/me", response_model=MeOut, summary="The caller: user, account, roles, permissions")
async def me(principal: CurrentPrincipal, tx: Transaction) -> Response:
    # Everything shown here is in the caller's cached grant (kept fresh like the permissions that
    # authorise every request), so the answer is made once per grant and kept with it: no query, no
    # serialisation, which makes this the cheapest authenticated read.
    grant = principal.grant
    assert grant is not None  # authenticate always sets it
    # An app's tokens may ask for fewer scopes: its answer depends on the permissions it ends up with.
    memo_key = (
        "me",
        principal.api_key_id,
        principal.app_id,
        principal.app_id and frozenset(principal.permissions),
    )
    body = grant.memo.get(memo_key)
    if body is None:
        folders: list[MeFolder] | Literal["all"] = "all"
        if not principal.all_folders:
            folders = await tx.read(
                lambda session: _folders(session, principal.account_id, principal.folder_ids)
            )
        can: dict[str, list[str]] = {}
        for o, a in sorted(principal.permissions, key=lambda p: (p[0], p[1])):
            can.setdefault(o.value, []).append(a.value)
        me_out = MeOut(
            user=MeUser(
                id=grant.user_id,
                username=grant.username,
                display_name=grant.display_name,
                email=grant.email,
                is_active=grant.is_active,
                last_login_at=grant.last_login_at,
            ),
            account=AccountRef(
                id=grant.account_id, name=grant.account_name, description=grant.account_description
            ),
            roles=[MeRole(id=r.id, name=r.name, builtin=r.builtin) for r in grant.roles],
            permissions=[
                PermissionOut(object=o, action=a)
                # An external app's (narrowed) view; the user's own grant otherwise.
                for o, a in sorted(principal.permissions, key=lambda p: (p[0], p[1]))
            ],
            can=can,
            all_folders=principal.all_folders,
            folder_ids=sorted(principal.folder_ids, key=str),
            folders=folders,
            via_api_key=principal.api_key_id,
        )
        body = grant.memo[memo_key] = me_out.model_dump_json().encode()
    return Response(body, media_type="application/json")


async def _folders(session: AsyncSession, account_id: uuid.UUID, ids: Any) -> list[MeFolder]:
    if not ids:
        return []
    rows = await session.execute(
        sa.select(AccessFolder.id, AccessFolder.name)
        .where(AccessFolder.account_id == account_id, AccessFolder.id.in_(list(ids)))
        .order_by(AccessFolder.name)
    )
    return [MeFolder(id=r.id, name=r.name) for r in rows]


# API keys -----------------------------------------------------------------------------------------


def _may_manage_others(principal: Principal) -> bool:
    """Whoever may change users may see and revoke their keys (never their secrets)."""
    return principal.can(O.USERS, A.UPDATE)


@router.post(
    "/api-keys",
    response_model=ApiKeyCreated,
    status_code=status.HTTP_201_CREATED,
    tags=["api-keys"],
    summary="Create an API key for the caller; the key is shown in this answer only",
)
async def create_api_key(
    body: ApiKeyCreate,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.API_KEYS, A.CREATE))],
) -> ApiKeyCreated:
    row, full = await service.create_api_key(tx, principal, body)
    return ApiKeyCreated.model_validate({**ApiKeyOut.model_validate(row).model_dump(), "key": full})


@router.get(
    "/api-keys",
    response_model=Page[ApiKeyOut],
    tags=["api-keys"],
    summary="The caller's API keys (all of the account's with all=true, for user managers)",
)
async def list_api_keys(
    tx: Transaction,
    paging: Annotated[PageParams, Depends(sorted_by("created_at", "name", "expires_at"))],
    principal: Annotated[Principal, Depends(require(O.API_KEYS, A.READ))],
    all: Annotated[bool, Query(description="Every key of the account (needs users:update)")] = False,
    user_id: Annotated[uuid.UUID | None, Query(description="Keys of this user")] = None,
    revoked: Annotated[
        bool | None, Query(description="Only revoked (true) or only live (false) keys")
    ] = None,
) -> Page[ApiKeyOut]:
    async def work(session: AsyncSession) -> Page[ApiKeyOut]:
        if all and not _may_manage_others(principal):
            raise Forbidden("listing every key of the account needs users:update")
        stmt = sa.select(ApiKey).where(service.api_keys_visible(principal, all))
        if user_id is not None:
            stmt = stmt.where(ApiKey.user_id == user_id)
        if revoked is not None:
            stmt = stmt.where(ApiKey.revoked_at.is_not(None) if revoked else ApiKey.revoked_at.is_(None))
        rows, total = await paginate(
            session,
            stmt,
            paging,
            sortable={"created_at": ApiKey.created_at, "name": ApiKey.name, "expires_at": ApiKey.expires_at},
            default_sort="-created_at",
        )
        return Page[ApiKeyOut](
            items=[ApiKeyOut.model_validate(r) for r in rows],
            total=total,
            limit=paging.limit,
            offset=paging.offset,
        )

    return await tx.read(work)


@router.delete(
    "/api-keys/{key_id:uuid}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["api-keys"],
    summary="Revoke an API key (the caller's own, or any of the account's for user managers)",
    responses={404: _PROBLEM},
)
async def revoke_api_key(
    key_id: uuid.UUID,
    tx: Transaction,
    principal: Annotated[Principal, Depends(require(O.API_KEYS, A.DELETE))],
) -> Response:
    await service.revoke_api_key(tx, principal, key_id, _may_manage_others(principal))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
