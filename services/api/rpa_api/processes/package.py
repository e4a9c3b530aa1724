"""Validation of an uploaded process package (a zip with an ``rpa.json`` manifest at its root).

Everything here is synchronous file work and runs in a thread (``asyncio.to_thread``): the package
sits in a temporary file, is hashed in pieces, and only the manifest is ever decompressed. The format
is described in docs/package-format.md; every refusal is a ``DomainError`` naming what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO

from rpa_common.errors import PayloadTooLarge, Unprocessable

MANIFEST_NAME = "rpa.json"
MAX_ENTRIES = 10_000
MAX_MANIFEST_BYTES = 256 * 1024
# The sum of the entries' uncompressed sizes may be at most this many times the package limit:
# more is a zip bomb for every robot that unpacks it.
EXPANSION_FACTOR = 10
HASH_BLOCK = 1024 * 1024

VERSION_LABEL = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,49}$")
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    entry_point: str
    min_runtime_version: str | None = None
    description: str | None = None
    default_input: dict[str, Any] | None = None


@dataclass(frozen=True)
class CheckedPackage:
    manifest: Manifest
    sha256: str
    size: int
    entries: int


def _bad_entry(name: str, why: str) -> Unprocessable:
    return Unprocessable(f"package entry {name!r} {why}", field="package", entry=name)


def entry_problem(name: str) -> str | None:
    """Why an entry name is unsafe to unpack anywhere, or None when it is fine."""
    if not name:
        return "has an empty name"
    if _CONTROL.search(name):
        return "has control characters in its name"
    if "\\" in name:
        return "uses a backslash (use '/' between folders)"
    if name.startswith("/"):
        return "is an absolute path"
    if _DRIVE.match(name):
        return "starts with a drive letter"
    if any(part == ".." for part in name.split("/")):
        return "climbs out of the package with '..'"
    return None


def _hash(fileobj: BinaryIO) -> tuple[str, int]:
    fileobj.seek(0)
    digest = hashlib.sha256()
    size = 0
    while block := fileobj.read(HASH_BLOCK):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def _check_entries(zf: zipfile.ZipFile, max_bytes: int) -> set[str]:
    infos = zf.infolist()
    if len(infos) > MAX_ENTRIES:
        raise Unprocessable(f"the package has {len(infos)} entries; at most {MAX_ENTRIES}", field="package")
    names: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        problem = entry_problem(name)
        if problem:
            raise _bad_entry(name, problem)
        if name in names:
            raise _bad_entry(name, "appears twice")
        if info.flag_bits & 0x1:
            raise _bad_entry(name, "is encrypted")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise _bad_entry(name, "is a symbolic link")
        names.add(name)
        total += info.file_size
    limit = EXPANSION_FACTOR * max_bytes
    if total > limit:
        raise Unprocessable(
            f"the package expands to {total} bytes; at most {limit} ({EXPANSION_FACTOR}x the package limit)",
            field="package",
        )
    return names


def _read_manifest(zf: zipfile.ZipFile) -> dict[str, Any]:
    try:
        info = zf.getinfo(MANIFEST_NAME)
    except KeyError:
        raise Unprocessable(
            f"the package has no {MANIFEST_NAME} manifest at its root", field="manifest"
        ) from None
    if info.file_size > MAX_MANIFEST_BYTES:
        raise Unprocessable(f"{MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes", field="manifest")
    raw = zf.read(info)
    try:
        doc = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Unprocessable(f"{MANIFEST_NAME} is not valid UTF-8 JSON: {exc}", field="manifest") from None
    if not isinstance(doc, dict):
        raise Unprocessable(f"{MANIFEST_NAME} must be a JSON object", field="manifest")
    return doc


def _string(doc: dict[str, Any], key: str, *, required: bool, max_length: int) -> str | None:
    value = doc.get(key)
    field = f"manifest.{key}"
    if value is None:
        if required:
            raise Unprocessable(f"the manifest needs {key!r}", field=field)
        return None
    if not isinstance(value, str):
        raise Unprocessable(f"{key!r} must be a string, not {type(value).__name__}", field=field)
    value = value.strip()
    if required and not value:
        raise Unprocessable(f"{key!r} must not be empty", field=field)
    if len(value) > max_length:
        raise Unprocessable(f"{key!r} is longer than {max_length} characters", field=field)
    return value


def _required(doc: dict[str, Any], key: str, *, max_length: int) -> str:
    value = _string(doc, key, required=True, max_length=max_length)
    if value is None:  # _string raised already; this keeps the type checker honest
        raise Unprocessable(f"the manifest needs {key!r}", field=f"manifest.{key}")
    return value


def parse_manifest(doc: dict[str, Any], names: set[str]) -> Manifest:
    """The manifest's fields, each checked (422 naming ``manifest.<field>``)."""
    name = _required(doc, "name", max_length=100)
    if _CONTROL.search(name):
        raise Unprocessable("'name' has control characters", field="manifest.name")
    version = _required(doc, "version", max_length=50)
    if not VERSION_LABEL.match(version):
        raise Unprocessable(
            f"'version' {version!r} is not a version label (letters, digits and . + _ -, e.g. 1.2.0)",
            field="manifest.version",
        )
    entry_point = _required(doc, "entry_point", max_length=255)
    problem = entry_problem(entry_point)
    if problem:
        raise Unprocessable(f"'entry_point' {entry_point!r} {problem}", field="manifest.entry_point")
    if not entry_point.endswith(".py"):
        raise Unprocessable("'entry_point' must name a .py file", field="manifest.entry_point")
    if entry_point not in names:
        raise Unprocessable(
            f"'entry_point' {entry_point!r} is not in the package", field="manifest.entry_point"
        )
    runtime = _string(doc, "min_runtime_version", required=False, max_length=50)
    if runtime is not None and not VERSION_LABEL.match(runtime):
        raise Unprocessable(
            f"'min_runtime_version' {runtime!r} is not a version label", field="manifest.min_runtime_version"
        )
    description = _string(doc, "description", required=False, max_length=1000)
    default_input = doc.get("default_input")
    if default_input is not None and not isinstance(default_input, dict):
        raise Unprocessable("'default_input' must be a JSON object", field="manifest.default_input")
    return Manifest(
        name=name,
        version=version,
        entry_point=entry_point,
        min_runtime_version=runtime or None,
        description=description,
        default_input=default_input,
    )


def inspect_package(fileobj: BinaryIO, *, max_bytes: int) -> CheckedPackage:
    """Hash and validate the package in ``fileobj`` (blocking: run it in a thread)."""
    fileobj.seek(0, 2)
    if fileobj.tell() > max_bytes:
        raise PayloadTooLarge(f"the package is larger than {max_bytes} bytes", field="package")
    sha256, size = _hash(fileobj)
    if size == 0:
        raise Unprocessable("the package is empty", field="package")
    fileobj.seek(0)
    try:
        with zipfile.ZipFile(fileobj) as zf:
            names = _check_entries(zf, max_bytes)
            manifest = parse_manifest(_read_manifest(zf), names)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise Unprocessable(f"the package is not a readable zip file: {exc}", field="package") from None
    except (OSError, ValueError, RuntimeError, OverflowError) as exc:
        # zipfile raises these on damaged headers (bad offsets, sizes, compression parameters).
        raise Unprocessable(f"the package is not a readable zip file: {exc}", field="package") from None
    return CheckedPackage(manifest=manifest, sha256=sha256, size=size, entries=len(names))
