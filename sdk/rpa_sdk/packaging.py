"""Build a process package (a zip with ``rpa.json`` at its root, docs/package-format.md) from a folder."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

MANIFEST = "rpa.json"
# Never packaged: caches, VCS folders, virtual environments.
_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".venv", "venv", ".mypy_cache", ".pytest_cache"}


class PackageError(ValueError):
    """The folder cannot be packaged (no manifest, a manifest that is not a JSON object...)."""


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise PackageError(f"{folder}: no {MANIFEST} manifest at the folder's root")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PackageError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise PackageError(f"{path}: the manifest must be a JSON object")
    for key in ("name", "version", "entry_point"):
        if not isinstance(manifest.get(key), str) or not manifest[key]:
            raise PackageError(f"{path}: '{key}' is required (a string)")
    if not (folder / manifest["entry_point"]).is_file():
        raise PackageError(f"{path}: the entry point {manifest['entry_point']!r} is not in the folder")
    return manifest


def package_files(folder: Path) -> list[Path]:
    """The files a package of ``folder`` holds, sorted (symbolic links and caches left out)."""
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part in _SKIP_DIRS for part in rel.parts) or path.is_symlink() or not path.is_file():
            continue
        if path.suffix in (".pyc", ".pyo"):
            continue
        files.append(path)
    return files


def build_package(folder: Path) -> tuple[dict[str, Any], bytes]:
    """``(manifest, zip bytes)`` of ``folder``: its files with relative ``/`` paths, the manifest at the root."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in package_files(folder):
            zf.write(path, path.relative_to(folder).as_posix())
    return manifest, buf.getvalue()
