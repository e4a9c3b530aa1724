"""Secrets of the domain at rest: the passwords of unattended accounts.

The API encrypts a password when a person sets it; the scheduler decrypts it only to put it in an
``OpenSession`` command for the coordinator. The owning account's id is bound as associated data, so a
ciphertext copied into another account's row does not decrypt.
"""

from __future__ import annotations

import uuid

from rpa_common.models import UnattendedAccount
from rpa_common.security import Encryptor
from rpa_common.settings import Settings


def _context(account_id: uuid.UUID) -> str:
    return str(account_id)


def encrypt_unattended_password(settings: Settings, account_id: uuid.UUID, password: str) -> bytes:
    """The ciphertext to store in ``unattended_account.password_encrypted``."""
    return Encryptor.from_settings(settings).encrypt(password, context=_context(account_id))


def unattended_password(settings: Settings, ua: UnattendedAccount) -> str | None:
    """The clear password of an unattended account, or None when none was set.

    Raises ``ValueError`` / ``cryptography.exceptions.InvalidTag`` when the ciphertext is damaged or its
    key is no longer configured: never hand a wrong password to a coordinator.
    """
    if ua.password_encrypted is None:
        return None
    return Encryptor.from_settings(settings).decrypt(ua.password_encrypted, context=_context(ua.account_id))
