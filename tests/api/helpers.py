"""Helpers shared by the API tests: process packages built in memory, NATS message matching.

``make_package`` gives the bytes of a valid package (a zip with ``rpa.json`` at its root, see
docs/package-format.md); its keyword arguments bend it into the invalid shapes tests need.
"""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

from nats.aio.subscription import Subscription


def make_package(
    name: str,
    version: str,
    entry_point: str = "main.py",
    files: Mapping[str, bytes | str] | None = None,
    *,
    manifest: Mapping[str, Any] | None = None,
    manifest_extra: Mapping[str, Any] | None = None,
    with_manifest: bool = True,
    description: str | None = None,
    min_runtime_version: str | None = None,
    default_input: Mapping[str, Any] | None = None,
) -> bytes:
    """The bytes of a process package.

    ``files`` maps zip entry names to their content; when it is not given the entry point gets a
    one-line script. ``manifest`` replaces the whole manifest (for malformed ones);
    ``manifest_extra`` adds or overrides keys; ``with_manifest=False`` leaves ``rpa.json`` out.
    """
    if files is None:
        files = {entry_point: f'print("hello from {name} {version}")\n'}
    if manifest is None:
        doc: dict[str, Any] = {"name": name, "version": version, "entry_point": entry_point}
        if description is not None:
            doc["description"] = description
        if min_runtime_version is not None:
            doc["min_runtime_version"] = min_runtime_version
        if default_input is not None:
            doc["default_input"] = dict(default_input)
        doc.update(manifest_extra or {})
    else:
        doc = dict(manifest)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        if with_manifest:
            zf.writestr("rpa.json", json.dumps(doc))
        for entry, content in files.items():
            zf.writestr(entry, content.encode() if isinstance(content, str) else content)
    return buf.getvalue()


async def next_matching(sub: Subscription, predicate: Callable[[bytes], bool], timeout: float = 3.0) -> bytes:
    """The data of the next message on ``sub`` that ``predicate`` accepts.

    Other test processes share the NATS server, so a test filters for its own objects' messages.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError("no matching message")
        msg = await sub.next_msg(timeout=remaining)
        if predicate(msg.data):
            return bytes(msg.data)
