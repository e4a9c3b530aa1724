"""Passwords (argon2), opaque keys, JWT access tokens and authenticated encryption at rest."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rpa_common.settings import Settings

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("timing-equaliser")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant-ish time whether or not the user exists (hash a dummy when there is none)."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class OpaqueKey:
    """A high-entropy key ``<kind>_<prefix>_<secret>``: looked up by prefix, checked by hash."""

    full: str
    prefix: str
    hash: str


def make_key(kind: str) -> OpaqueKey:
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    full = f"{kind}_{prefix}_{secret}"
    return OpaqueKey(full=full, prefix=prefix, hash=hash_key(full))


def hash_key(full: str) -> str:
    # Keys carry 256 random bits, so a fast hash is safe here (unlike passwords).
    return hashlib.sha256(full.encode()).hexdigest()


def split_key(full: str, kind: str) -> str | None:
    """The prefix of a well-formed key of ``kind``, else None."""
    parts = full.split("_", 2)
    if len(parts) != 3 or parts[0] != kind or len(parts[1]) != 12:
        return None
    return parts[1]


def key_matches(full: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(full), stored_hash)


# Access tokens -----------------------------------------------------------------------------------

JWT_ALG = "HS256"
JWT_AUDIENCE = "rpa-api"


def issue_access_token(
    settings: Settings,
    *,
    user_id: uuid.UUID,
    account_id: uuid.UUID,
    token_version: int,
    app_id: uuid.UUID | None = None,
    scopes: list[str] | None = None,
    ttl_s: int | None = None,
) -> str:
    """A signed access token; with ``app_id``, one of an external application acting for ``user_id``
    (``ver`` is then the app's token version, ``scp`` the scopes it asked for, if fewer than its own)."""
    now = datetime.now(UTC)
    ttl = settings.access_token_ttl_s if ttl_s is None else ttl_s
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "acc": str(account_id),
        "ver": token_version,
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(seconds=ttl)).timestamp()),
        "aud": JWT_AUDIENCE,
        "jti": uuid.uuid4().hex,
    }
    if app_id is not None:
        claims["app"] = str(app_id)
    if scopes is not None:
        claims["scp"] = scopes
    return jwt.encode(claims, settings.secret_key.get_secret_value(), algorithm=JWT_ALG)


def decode_access_token(settings: Settings, token: str) -> dict[str, Any]:
    """Raises ``jwt.PyJWTError`` when the token is forged, expired or malformed."""
    return jwt.decode(
        token,
        settings.secret_key.get_secret_value(),
        algorithms=[JWT_ALG],
        audience=JWT_AUDIENCE,
        options={"require": ["exp", "sub", "acc", "aud"]},
    )


# Encryption at rest ------------------------------------------------------------------------------


class Encryptor:
    """AES-256-GCM with key ids: ``b"v1" + key_id + nonce + ciphertext``; the first key encrypts.

    The account id (or another owner id) is bound as associated data, so a ciphertext copied to
    another row does not decrypt.
    """

    VERSION = b"\x01"

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("at least one encryption key is needed")
        for key_id, key in keys:
            if len(key) != 32 or not key_id or len(key_id.encode()) > 255:
                raise ValueError("encryption keys are 32 bytes with a short id")
        self._keys = {key_id.encode(): AESGCM(key) for key_id, key in keys}
        self._current = keys[0][0].encode()

    @classmethod
    def from_settings(cls, settings: Settings) -> Encryptor:
        raw = settings.encryption_keys.get_secret_value().strip()
        if not raw:
            derived = hashlib.sha256(
                b"rpa-encryption:" + settings.secret_key.get_secret_value().encode()
            ).digest()
            return cls([("dev", derived)])
        keys = []
        for item in raw.split(","):
            key_id, _, b64 = item.strip().partition(":")
            keys.append((key_id, base64.b64decode(b64)))
        return cls(keys)

    def encrypt(self, plaintext: str, *, context: str) -> bytes:
        nonce = os.urandom(12)
        ct = self._keys[self._current].encrypt(nonce, plaintext.encode(), context.encode())
        return self.VERSION + bytes([len(self._current)]) + self._current + nonce + ct

    def decrypt(self, blob: bytes, *, context: str) -> str:
        if not blob or blob[:1] != self.VERSION:
            raise ValueError("unknown ciphertext format")
        n = blob[1]
        key_id = blob[2 : 2 + n]
        nonce = blob[2 + n : 14 + n]
        aead = self._keys.get(key_id)
        if aead is None:
            raise ValueError("ciphertext key is not configured")
        return aead.decrypt(nonce, blob[14 + n :], context.encode()).decode()

    def needs_rotation(self, blob: bytes) -> bool:
        return blob[2 : 2 + blob[1]] != self._current
