"""Sealed boxes: secrets the scheduler sends to one coordinator, readable by that coordinator only.

Each coordinator has an X25519 key pair; its public key is registered on the terminal servers it
serves (``terminal_server.public_key``). The scheduler seals a session's password and robot key
to that public key, so NATS, its monitoring endpoints and any log see only ciphertext; the
coordinator opens the box in memory.

Format (URL-safe base64, no padding), version 1::

    b"\\x01" | ephemeral X25519 public key (32) | nonce (12) | AES-256-GCM ciphertext + tag

The AES key is HKDF-SHA256 over the X25519 shared secret, salted with both public keys; the
``context`` (the session's id) is bound in the HKDF info and as associated data, so a box copied
into another session's command does not open.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 1
_INFO = b"rpa sealed box v1|"
_HEADER = 1 + 32 + 12
PUBLIC_KEY_CHARS = 43
"""Length of a public key in URL-safe base64 without padding (32 bytes)."""


class SealError(ValueError):
    """A box or key that is malformed, or a box that was not sealed for this key and context."""


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise SealError("not base64") from exc


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def parse_public_key(text: str) -> X25519PublicKey:
    """A public key from its text form; ``SealError`` when it is not one."""
    raw = _b64d(text.strip())
    if len(raw) != 32:
        raise SealError("an X25519 public key is 32 bytes")
    return X25519PublicKey.from_public_bytes(raw)


def _derive(shared: bytes, eph_pub: bytes, recipient_pub: bytes, context: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=eph_pub + recipient_pub, info=_INFO + context.encode()
    ).derive(shared)


@dataclass(frozen=True)
class SealKeyPair:
    """A coordinator's key pair; ``public`` is what gets registered on its terminal servers."""

    private: X25519PrivateKey

    @classmethod
    def generate(cls) -> SealKeyPair:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_text(cls, text: str) -> SealKeyPair:
        raw = _b64d(text.strip())
        if len(raw) != 32:
            raise SealError("an X25519 private key is 32 bytes")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def private_text(self) -> str:
        return _b64e(
            self.private.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
        )

    @property
    def public(self) -> str:
        return _b64e(_raw_public(self.private.public_key()))

    def open(self, box: str, context: str) -> bytes:
        """The plaintext of ``box``; ``SealError`` when it is damaged or not for this key/context."""
        data = _b64d(box)
        if len(data) < _HEADER + 16 or data[0] != VERSION:
            raise SealError("not a sealed box of a known version")
        eph_pub, nonce, ciphertext = data[1:33], data[33:45], data[45:]
        recipient_pub = _raw_public(self.private.public_key())
        shared = self.private.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        key = _derive(shared, eph_pub, recipient_pub, context)
        try:
            return AESGCM(key).decrypt(nonce, ciphertext, context.encode())
        except InvalidTag as exc:
            raise SealError("the box was not sealed for this key and context") from exc

    def open_json(self, box: str, context: str) -> dict[str, str]:
        try:
            value = json.loads(self.open(box, context))
        except ValueError as exc:
            raise SealError("the box does not hold a JSON object") from exc
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise SealError("the box does not hold a JSON object of strings")
        return value


def seal(public_key: str, plaintext: bytes, context: str) -> str:
    """Seal ``plaintext`` to ``public_key`` (text form), bound to ``context``."""
    recipient = parse_public_key(public_key)
    recipient_pub = _raw_public(recipient)
    ephemeral = X25519PrivateKey.generate()
    eph_pub = _raw_public(ephemeral.public_key())
    key = _derive(ephemeral.exchange(recipient), eph_pub, recipient_pub, context)
    nonce = os.urandom(12)
    return _b64e(bytes([VERSION]) + eph_pub + nonce + AESGCM(key).encrypt(nonce, plaintext, context.encode()))


def seal_json(public_key: str, values: dict[str, str], context: str) -> str:
    return seal(public_key, json.dumps(values, separators=(",", ":")).encode(), context)


def load_or_create_key_pair(path: Path) -> SealKeyPair:
    """The key pair kept in ``path`` (mode 0600), made on first use.

    Created with ``O_EXCL`` so two processes starting together keep one key; a file readable by
    others is refused rather than trusted."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        st = path.stat()
        if st.st_mode & 0o077:
            raise SealError(f"{path} is readable by others (chmod 600 it)") from None
        return SealKeyPair.from_text(path.read_text())
    pair = SealKeyPair.generate()
    with os.fdopen(fd, "w") as f:
        f.write(pair.private_text() + "\n")
    return pair
