"""A webhook trigger's secret and the check of a call.

The secret is 32 random bytes shown once (creation, rotation) as ``whs_`` + urlsafe base64. To
recompute HMAC signatures the API must read it back, so it is not hashed but wrapped (AES-256-GCM)
under the current credentials master key (``rpa_common.credentials.Keyring``), with the account and
the trigger bound as associated data: a wrapped secret copied to another trigger does not open. The
key id is stored beside it (``trigger.webhook_key_id``). ``python -m rpa_common.credentials rotate``
re-wraps credential data keys only: before retiring a master key, rotate the webhook secrets it
wraps (``POST /triggers/{id}/webhook-secret``), see docs/api-guide.md.

Two ways to call, per trigger (``webhook_auth``):

- ``hmac`` (default): ``X-RPA-Timestamp: <unix seconds>`` and ``X-RPA-Signature: sha256=<hex>``,
  the HMAC-SHA256 under the secret of ``<timestamp>.`` followed by the raw body. A timestamp more
  than ``REPLAY_WINDOW_S`` away from the server's clock is refused, and a signature is used once:
  its digest is the fire's key, so a replay within the window creates no second job.
- ``secret``: ``X-RPA-Trigger-Secret: <secret>``, compared in constant time; an ``Idempotency-Key``
  header, if given, keys the fire (a retried call creates one job).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
import uuid
from collections.abc import Mapping

from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.credentials import CredentialUnreadable, ensure_checked, keyring_from_settings
from rpa_common.errors import Unauthorized
from rpa_common.models import Trigger
from rpa_common.settings import Settings

PREFIX = "whs_"
REPLAY_WINDOW_S = 300
TIMESTAMP_HEADER = "X-RPA-Timestamp"
SIGNATURE_HEADER = "X-RPA-Signature"
SECRET_HEADER = "X-RPA-Trigger-Secret"  # noqa: S105 - a header name


def new_secret() -> str:
    return PREFIX + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


async def seal(session: AsyncSession, settings: Settings, trigger: Trigger, secret: str) -> None:
    """Store ``secret`` wrapped in ``trigger``'s columns (its id and account must be set)."""
    ring = keyring_from_settings(settings)
    await ensure_checked(session, ring)
    trigger.webhook_secret_wrapped, trigger.webhook_key_id = ring.wrap(
        secret.encode(), account_id=trigger.account_id, value_id=trigger.id
    )


async def _secret_of(session: AsyncSession, settings: Settings, trigger: Trigger) -> bytes:
    if trigger.webhook_secret_wrapped is None or trigger.webhook_key_id is None:
        raise CredentialUnreadable("no webhook secret is stored")
    ring = keyring_from_settings(settings)
    await ensure_checked(session, ring)
    return ring.unwrap(
        trigger.webhook_secret_wrapped,
        trigger.webhook_key_id,
        account_id=trigger.account_id,
        value_id=trigger.id,
    )


def signature(secret: bytes | str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: what a caller puts in ``X-RPA-Signature``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


async def authenticate(
    session: AsyncSession,
    settings: Settings,
    trigger: Trigger,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
) -> str:
    """Check a call of ``trigger``'s URL; returns the fire key of this call, or raises 401."""
    secret = await _secret_of(session, settings, trigger)
    if trigger.webhook_auth == "secret":
        given = headers.get(SECRET_HEADER.lower(), "")
        if not given or not hmac.compare_digest(given.encode(), secret):
            raise Unauthorized(f"missing or wrong {SECRET_HEADER}", field=SECRET_HEADER)
        key = headers.get("idempotency-key")
        if key:
            return "hook:key:" + hashlib.sha256(key.encode()).hexdigest()
        return f"hook:{uuid.uuid4().hex}"
    stamp = headers.get(TIMESTAMP_HEADER.lower(), "")
    given = headers.get(SIGNATURE_HEADER.lower(), "")
    if not stamp.isdigit():
        raise Unauthorized(f"{TIMESTAMP_HEADER} must be the time in Unix seconds", field=TIMESTAMP_HEADER)
    clock = time.time() if now is None else now
    if abs(clock - int(stamp)) > REPLAY_WINDOW_S:
        raise Unauthorized(
            f"{TIMESTAMP_HEADER} is more than {REPLAY_WINDOW_S} s from the server's time",
            field=TIMESTAMP_HEADER,
        )
    expected = signature(secret, stamp, body)
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized(
            f"wrong {SIGNATURE_HEADER}: expected sha256=<hex HMAC-SHA256 of '<timestamp>.' + body>",
            field=SIGNATURE_HEADER,
        )
    # One job per signed request: a replay inside the window finds this fire key taken.
    return "hook:" + expected.removeprefix("sha256=")
