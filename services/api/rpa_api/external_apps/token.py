"""The token endpoint's form (password and client credentials grants) and its client-credentials half.

Errors of the client credentials grant are RFC 6749 §5.2 JSON (``error``, ``error_description``), as
OAuth2 client libraries expect, not problem+json. A client authenticates with HTTP Basic
(``client_id:client_secret``, each form-urlencoded first, §2.3.1) or with form fields.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated
from urllib.parse import unquote_plus

from fastapi import Form, Request
from fastapi.responses import JSONResponse

from rpa_api.deps import Tx
from rpa_api.external_apps import service
from rpa_api.external_apps.schemas import ClientTokenOut

GRANT_PASSWORD = "password"  # noqa: S105 - an OAuth2 grant type
GRANT_CLIENT_CREDENTIALS = "client_credentials"

_Field = Annotated[str | None, Form(max_length=1000)]


class TokenForm:
    """``application/x-www-form-urlencoded`` fields of ``POST /auth/token``, for either grant."""

    def __init__(
        self,
        grant_type: Annotated[
            str | None, Form(max_length=100, description="password (default) or client_credentials")
        ] = None,
        username: _Field = None,
        password: _Field = None,
        scope: Annotated[str, Form(max_length=4000)] = "",
        client_id: _Field = None,
        client_secret: _Field = None,
    ) -> None:
        self.grant_type = grant_type or GRANT_PASSWORD
        self.username = username
        self.password = password
        self.scope = scope
        self.client_id = client_id
        self.client_secret = client_secret


def oauth_error(status: int, error: str, description: str) -> JSONResponse:
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="rpa"'
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=headers
    )


def _basic(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, pw = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise service.OAuthError(401, "invalid_client", "malformed HTTP Basic credentials") from None
    if not sep:
        raise service.OAuthError(401, "invalid_client", "malformed HTTP Basic credentials")
    return unquote_plus(user), unquote_plus(pw)


async def client_credentials(request: Request, tx: Tx, form: TokenForm) -> ClientTokenOut | JSONResponse:
    try:
        basic = _basic(request)
        if basic is not None and (form.client_id or form.client_secret):
            raise service.OAuthError(
                400, "invalid_request", "authenticate the client one way: HTTP Basic or form fields"
            )
        client_id, secret = basic if basic is not None else (form.client_id, form.client_secret)
        out = await service.client_token(
            tx.ctx,
            tx,
            service.TokenRequest(
                client_id=client_id,
                client_secret=secret,
                scope=form.scope or None,
                address=request.client.host if request.client else None,
                user_agent=(request.headers.get("user-agent") or "")[:500] or None,
            ),
        )
    except service.OAuthError as exc:
        return oauth_error(exc.status, exc.error, exc.description)
    return out
