"""A license issuer for the tests: a fresh Ed25519 key pair per test session, its public key in the
settings the tests build (``make_settings``), and ``issue_key`` to sign licenses with it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rpa_common.licensing import LicenseDocument, issue, public_key_text
from rpa_common.models.enums import LicenseKind

ISSUER = Ed25519PrivateKey.generate()
PUBLIC_KEY = public_key_text(ISSUER.public_key())


def issue_key(
    kind: LicenseKind = LicenseKind.UNATTENDED,
    capacity: int = 1,
    expires_at: datetime | None = None,
    *,
    licensee: str = "Tests Inc.",
    signer: Ed25519PrivateKey | None = None,
) -> str:
    document = LicenseDocument(
        id=uuid.uuid4(),
        licensee=licensee,
        kind=kind,
        capacity=capacity,
        issued_at=datetime.now(UTC).replace(microsecond=0),
        expires_at=expires_at,
    )
    return issue(signer or ISSUER, document)
