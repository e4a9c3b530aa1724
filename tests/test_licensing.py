"""License keys: issued by the self-hoster's command, verified against the configured public keys."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rpa_common.licensing import (
    LicenseDocument,
    LicenseKeyError,
    issue,
    parse_public_keys,
    public_key_text,
    verify,
)
from rpa_common.models.enums import LicenseKind

ROOT = Path(__file__).resolve().parent.parent


def _document(**changes: object) -> LicenseDocument:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "licensee": "ACME Überseehandel",
        "kind": LicenseKind.UNATTENDED,
        "capacity": 25,
        "issued_at": datetime(2026, 12, 1, tzinfo=UTC),
        "expires_at": datetime(2027, 12, 31, 23, 59, 59, tzinfo=UTC),
    }
    values.update(changes)
    return LicenseDocument(**values)  # type: ignore[arg-type]


def test_a_key_verifies_against_its_issuer_and_not_another() -> None:
    issuer, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    document = _document()
    key = issue(issuer, document)
    assert verify(key, [issuer.public_key()]) == document
    # Several trusted keys (an issuer rolling its key): any of them proves it.
    assert verify(key, [stranger.public_key(), issuer.public_key()]) == document
    with pytest.raises(LicenseKeyError, match="signature"):
        verify(key, [stranger.public_key()])


def test_an_altered_key_is_refused() -> None:
    issuer = Ed25519PrivateKey.generate()
    key = issue(issuer, _document(capacity=5))
    prefix, payload, signature = key.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["capacity"] = 5000  # more robots than paid for
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    with pytest.raises(LicenseKeyError, match="signature"):
        verify(f"{prefix}.{forged}.{signature}", [issuer.public_key()])
    for damaged in ("", "hello", "RPA1.a.b.c", "RPA2." + key[5:], key[:-3] + "!!!"):
        with pytest.raises(LicenseKeyError):
            verify(damaged, [issuer.public_key()])


def test_expiry_is_reported_not_hidden() -> None:
    issuer = Ed25519PrivateKey.generate()
    past = datetime.now(UTC) - timedelta(days=1)
    document = verify(issue(issuer, _document(expires_at=past)), [issuer.public_key()])
    assert document.expired()
    assert not verify(issue(issuer, _document(expires_at=None)), [issuer.public_key()]).expired()


def test_public_keys_setting() -> None:
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    text = f"{public_key_text(a.public_key())}, {public_key_text(b.public_key())}"
    assert len(parse_public_keys(text)) == 2
    with pytest.raises(ValueError, match="RPA_LICENSE_PUBLIC_KEYS"):
        parse_public_keys("not-a-key")


def test_the_command_creates_a_pair_issues_and_verifies(tmp_path: Path) -> None:
    pem = tmp_path / "issuer.pem"

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rpa_common.licensing", *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )

    made = run("keypair", "--private-key-file", str(pem))
    assert made.returncode == 0, made.stderr
    public = made.stdout.strip()
    assert oct(os.stat(pem).st_mode & 0o777) == "0o600", (
        "the issuer's private key is readable by its owner only"
    )
    assert run("keypair", "--private-key-file", str(pem)).returncode != 0, (
        "an issuer key is never overwritten"
    )

    issued = run(
        "issue",
        "--private-key-file",
        str(pem),
        "--licensee",
        "ACME",
        "--kind",
        "Attended Floating",
        "--capacity",
        "3",
        "--expires",
        "2999-01-31",
    )
    assert issued.returncode == 0, issued.stderr
    key = issued.stdout.strip()
    checked = run("verify", "--public-key", public, stdin=key)
    assert checked.returncode == 0, checked.stderr
    shown = json.loads(checked.stdout)
    assert (shown["kind"], shown["capacity"], shown["licensee"]) == ("Attended Floating", 3, "ACME")
    assert shown["expires_at"].startswith("2999-01-31T23:59:59")
    other = public_key_text(Ed25519PrivateKey.generate().public_key())
    refused = run("verify", "--public-key", other, stdin=key)
    assert refused.returncode == 1 and "signature" in refused.stderr
