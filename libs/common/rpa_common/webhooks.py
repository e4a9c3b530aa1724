"""Outgoing webhooks: the subscription secret and the signature of a delivery.

Each POST carries ``X-RPA-Signature: t=<unix seconds>,v1=<hex>`` where ``<hex>`` is the
HMAC-SHA256, under the subscription's secret (the whole ``whsec_...`` string, as UTF-8), of
``<t>.`` followed by the raw request body. A receiver verifies it so (``verify`` does exactly this):

1. split the header on ``,`` into ``t`` and one or more ``v1`` values (during a secret rotation
   only the new secret signs; the old one stops at once);
2. refuse when ``|now - t|`` is larger than its replay window (we suggest ``REPLAY_WINDOW_S``);
3. compute the HMAC of ``f"{t}.".encode() + body`` and compare it in constant time.

The body is the event's JSON (``rpa_common.events.Event``); ``X-RPA-Event-Id`` and
``X-RPA-Event-Type`` repeat its ``id`` and ``type``. Delivery is at least once: a receiver
dedupes by the event id.

The secret is wrapped (AES-256-GCM) under the current credentials master key with the account and
the subscription bound as associated data, as a webhook trigger's secret is.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.credentials import ensure_checked, keyring_from_settings
from rpa_common.settings import Settings

PREFIX = "whsec_"
REPLAY_WINDOW_S = 300
SIGNATURE_HEADER = "X-RPA-Signature"
EVENT_ID_HEADER = "X-RPA-Event-Id"
EVENT_TYPE_HEADER = "X-RPA-Event-Type"


def new_secret() -> str:
    return PREFIX + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


async def seal(
    session: AsyncSession, settings: Settings, account_id: uuid.UUID, subscription_id: uuid.UUID, secret: str
) -> tuple[bytes, str]:
    """``(wrapped, key id)`` of ``secret`` under the current master key."""
    ring = keyring_from_settings(settings)
    await ensure_checked(session, ring)
    return ring.wrap(secret.encode(), account_id=account_id, value_id=subscription_id)


async def unseal(
    session: AsyncSession,
    settings: Settings,
    account_id: uuid.UUID,
    subscription_id: uuid.UUID,
    wrapped: bytes,
    key_id: str,
) -> bytes:
    ring = keyring_from_settings(settings)
    await ensure_checked(session, ring)
    return ring.unwrap(wrapped, key_id, account_id=account_id, value_id=subscription_id)


def sign(secret: bytes, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-RPA-Signature`` header value of ``body``."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify(
    secret: bytes | str,
    header: str,
    body: bytes,
    *,
    window_s: int = REPLAY_WINDOW_S,
    now: float | None = None,
) -> bool:
    """What a receiver does (documented algorithm): True when ``header`` signs ``body`` recently."""
    key = secret.encode() if isinstance(secret, str) else secret
    stamp = ""
    given: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            stamp = value
        elif name == "v1":
            given.append(value)
    if not stamp.isdigit() or not given:
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > window_s:
        return False
    expected = hmac.new(key, f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, g) for g in given)
