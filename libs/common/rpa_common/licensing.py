"""License keys: signed documents the orchestrator verifies against public keys from its settings.

A license key is ``RPA1.<payload>.<signature>``: the payload is the license as canonical JSON (keys
sorted, no spaces, UTF-8), the signature an Ed25519 signature of the bytes ``RPA1.<payload>``, both
base64url without padding. The payload names the licensee, the kind (Attended, Unattended,
Orchestrator, Attended Floating), the capacity (robots at once), when it was issued and when it
expires (or never). Nothing in it is secret; the key cannot be altered without the issuer's private
key.

The orchestrator holds only public keys: ``RPA_LICENSE_PUBLIC_KEYS`` (comma-separated, base64 of the
32 raw bytes, the first the current one; several so that an issuer can roll its key). A self-hoster
issues its own licenses with this module's command::

    python -m rpa_common.licensing keypair --private-key-file issuer.pem     # prints the public key
    python -m rpa_common.licensing issue --private-key-file issuer.pem \\
        --licensee "ACME" --kind Unattended --capacity 25 --expires 2027-12-31
    python -m rpa_common.licensing verify --public-key BASE64 < key.txt

The private key is read from a file (PEM, PKCS#8), never from the command line or the environment.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from rpa_common.models.enums import LicenseKind

PREFIX = "RPA1"
MAX_KEY_CHARS = 4096


class LicenseKeyError(ValueError):
    """A license key that is malformed, signed by no trusted key, or altered. The message says which,
    for the person who pasted it."""


@dataclass(frozen=True)
class LicenseDocument:
    id: uuid.UUID
    licensee: str
    kind: LicenseKind
    capacity: int
    issued_at: datetime
    expires_at: datetime | None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and (now or datetime.now(UTC)) >= self.expires_at

    def to_json(self) -> dict[str, Any]:
        return {
            "v": 1,
            "id": str(self.id),
            "licensee": self.licensee,
            "kind": self.kind.value,
            "capacity": self.capacity,
            "issued_at": self.issued_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _canonical(document: LicenseDocument) -> bytes:
    return json.dumps(document.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def issue(private_key: Ed25519PrivateKey, document: LicenseDocument) -> str:
    """The license key of ``document``, signed with ``private_key``."""
    signed = f"{PREFIX}.{_b64(_canonical(document))}"
    return f"{signed}.{_b64(private_key.sign(signed.encode('ascii')))}"


def public_key_text(key: Ed25519PublicKey) -> str:
    """The form ``RPA_LICENSE_PUBLIC_KEYS`` takes: base64 of the 32 raw bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def parse_public_keys(text: str) -> list[Ed25519PublicKey]:
    """``RPA_LICENSE_PUBLIC_KEYS``: comma-separated base64 raw Ed25519 public keys."""
    keys = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            raw = base64.b64decode(part, validate=True)
            keys.append(Ed25519PublicKey.from_public_bytes(raw))
        except (binascii.Error, ValueError) as exc:
            raise ValueError(
                f"RPA_LICENSE_PUBLIC_KEYS: {part[:12]}... is not a base64 Ed25519 public key"
            ) from exc
    return keys


def _parse_time(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise LicenseKeyError(f"the license's {name} is missing")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise LicenseKeyError(f"the license's {name} is not a time") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def verify(key: str, public_keys: Sequence[Ed25519PublicKey]) -> LicenseDocument:
    """The license ``key`` holds, once its signature is proven by one of ``public_keys``.

    Raises ``LicenseKeyError`` for anything else. Expiry is not checked here: an expired license is
    still a genuine one (the caller decides what it may still do).
    """
    key = key.strip()
    if len(key) > MAX_KEY_CHARS:
        raise LicenseKeyError(f"a license key has at most {MAX_KEY_CHARS} characters")
    parts = key.split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise LicenseKeyError(f"not a license key: expected {PREFIX}.<payload>.<signature>")
    if not public_keys:
        raise LicenseKeyError("no license public key is configured (RPA_LICENSE_PUBLIC_KEYS)")
    try:
        payload = _unb64(parts[1])
        signature = _unb64(parts[2])
    except (binascii.Error, ValueError) as exc:
        raise LicenseKeyError("the license key is damaged (not base64url)") from exc
    signed = f"{parts[0]}.{parts[1]}".encode("ascii")
    for public_key in public_keys:
        try:
            public_key.verify(signature, signed)
            break
        except InvalidSignature:
            continue
    else:
        raise LicenseKeyError("the license key's signature does not match any trusted issuer key")
    try:
        data = json.loads(payload)
        if not isinstance(data, dict) or data.get("v") != 1:
            raise LicenseKeyError("unknown license format version")
        capacity = data["capacity"]
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 0:
            raise LicenseKeyError("the license's capacity is not a count")
        return LicenseDocument(
            id=uuid.UUID(data["id"]),
            licensee=str(data["licensee"]),
            kind=LicenseKind(data["kind"]),
            capacity=capacity,
            issued_at=_parse_time(data.get("issued_at"), "issue time"),
            expires_at=_parse_time(data["expires_at"], "expiry") if data.get("expires_at") else None,
        )
    except (KeyError, ValueError, TypeError) as exc:
        if isinstance(exc, LicenseKeyError):
            raise
        raise LicenseKeyError(f"the license's content is malformed: {type(exc).__name__}") from exc


# Command ------------------------------------------------------------------------------------------


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SystemExit(f"{path}: not an Ed25519 private key")
    return key


def _expiry(text: str | None) -> datetime | None:
    if not text or text == "never":
        return None
    if len(text) == 10:  # a day: the license holds until that day ends, in UTC
        return datetime.combine(date.fromisoformat(text), time.max, tzinfo=UTC).replace(microsecond=0)
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rpa_common.licensing", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pair = sub.add_parser("keypair", help="create an issuer key pair; prints the public key")
    pair.add_argument("--private-key-file", required=True, type=Path)
    iss = sub.add_parser("issue", help="issue a license key (printed)")
    iss.add_argument("--private-key-file", required=True, type=Path)
    iss.add_argument("--licensee", required=True)
    iss.add_argument("--kind", required=True, choices=[k.value for k in LicenseKind])
    iss.add_argument("--capacity", required=True, type=int)
    iss.add_argument(
        "--expires", default=None, help="YYYY-MM-DD (end of that day, UTC), an ISO time, or never"
    )
    ver = sub.add_parser("verify", help="verify a license key read from standard input")
    ver.add_argument(
        "--public-key", action="append", default=[], help="base64; default RPA_LICENSE_PUBLIC_KEYS"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)

    if args.command == "keypair":
        if args.private_key_file.exists():
            raise SystemExit(f"{args.private_key_file} exists: refusing to overwrite an issuer key")
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(args.private_key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        print(public_key_text(key.public_key()))
        return 0
    if args.command == "issue":
        if args.capacity < 0:
            raise SystemExit("--capacity: a count, 0 or more")
        document = LicenseDocument(
            id=uuid.uuid4(),
            licensee=args.licensee,
            kind=LicenseKind(args.kind),
            capacity=args.capacity,
            issued_at=datetime.now(UTC).replace(microsecond=0),
            expires_at=_expiry(args.expires),
        )
        print(issue(_load_private_key(args.private_key_file), document))
        return 0
    keys = parse_public_keys(",".join(args.public_key) or os.environ.get("RPA_LICENSE_PUBLIC_KEYS", ""))
    try:
        document = verify(sys.stdin.read(), keys)
    except LicenseKeyError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(document.to_json(), indent=2))
    if document.expired():
        print("expired", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
