"""Profiles of the ``rpa`` command: ``config.json`` in the user's config folder (platformdirs) holds each
profile's server, username and kind of secret; the secret (access token or API key) lives in the OS
keyring when there is one, else in ``secrets.json`` next to it, readable by the user only (0600)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import platformdirs

APP = "rpa"
KEYRING_SERVICE = "rpa-orchestrator"


def config_dir() -> Path:
    return Path(platformdirs.user_config_dir(APP, appauthor=False))


@dataclass
class Profile:
    name: str
    server: str
    username: str | None = None
    auth: str = "token"  # "token" (from a password login) or "api_key"
    store: str = "keyring"  # where the secret is: "keyring" or "file"


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _write_private(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.chmod(path, 0o600)


def load_profiles() -> tuple[str | None, dict[str, Profile]]:
    data = _read(config_dir() / "config.json")
    profiles = {name: Profile(name=name, **fields) for name, fields in data.get("profiles", {}).items()}
    return data.get("default"), profiles


def save_profile(profile: Profile, *, make_default: bool = True) -> None:
    path = config_dir() / "config.json"
    data = _read(path)
    fields = asdict(profile)
    fields.pop("name")
    data.setdefault("profiles", {})[profile.name] = fields
    if make_default or not data.get("default"):
        data["default"] = profile.name
    _write_private(path, data)


def _keyring() -> Any | None:
    """The OS keyring, or None when there is none usable (headless CI, a fail backend)."""
    if os.environ.get("RPA_NO_KEYRING"):
        return None
    try:
        import keyring
        from keyring.backends import fail

        backend = keyring.get_keyring()
        if (
            isinstance(backend, fail.Keyring)
            or "fail" in type(backend).__module__
            or "null" in type(backend).__module__
        ):
            return None
        return keyring
    except Exception:  # any keyring import or backend failure means: no keyring
        return None


def store_secret(profile_name: str, secret: str) -> str:
    """Keep the profile's secret; answers where: "keyring" or "file" (the 0600 file)."""
    kr = _keyring()
    if kr is not None:
        try:
            kr.set_password(KEYRING_SERVICE, profile_name, secret)
        except Exception:  # a keyring that refuses (locked, no D-Bus...): fall back to the file
            kr = None
        else:
            return "keyring"
    path = secrets_file()
    data = _read(path)
    data[profile_name] = secret
    _write_private(path, data)
    return "file"


def load_secret(profile: Profile) -> str | None:
    if profile.store == "keyring":
        kr = _keyring()
        if kr is not None:
            try:
                value = kr.get_password(KEYRING_SERVICE, profile.name)
            except Exception:  # unreadable keyring: try the file
                value = None
            if value:
                return str(value)
    value = _read(secrets_file()).get(profile.name)
    return str(value) if value else None


def secrets_file() -> Path:
    return config_dir() / "secrets.json"
