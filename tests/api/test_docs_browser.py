"""``/docs`` works on a site without internet: a real headless Chromium renders every operation from
assets the API serves itself, and no request of the page leaves the machine.

Chromium is Debian's package (``.ci/run`` installs it, as it installs haproxy); this test installs
nothing. Without it the test is skipped, except under CI=true where that is a failure. Chromium's
NetLog records every request; the browser's own background requests (update checks, sign-in) are
not the page's and are told apart by their initiator, and a host resolver that knows only 127.0.0.1
makes sure none of them reaches anything either.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.api.conftest import LiveAPI
from tests.conftest import IN_CI

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    # Swagger UI renders after its script ran and fetched /openapi.json: give it virtual time.
    "--virtual-time-budget=20000",
]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if IN_CI:
            pytest.fail("chromium is not installed: .ci/run installs it (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (Debian package `chromium`)")
    return path


def _page_requests(netlog: Path, origin: str) -> list[str]:
    """URLs the page asked for: the navigation, and every request the page's origin initiated."""
    doc: dict[str, Any] = json.loads(netlog.read_text())
    start = doc["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in doc["events"]:
        params = event.get("params") or {}
        if event["type"] != start or "url" not in params:
            continue
        by_page = params.get("initiator") == origin or "127.0.0.1" in str(params.get("site_for_cookies"))
        if by_page:
            urls.append(params["url"])
    return urls


def test_docs_render_every_operation_offline(live_api: LiveAPI, tmp_path: Path) -> None:
    chromium = _chromium()
    netlog = tmp_path / "netlog.json"
    done = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--log-net-log={netlog}",
            "--net-log-capture-mode=Default",
            "--dump-dom",
            f"{live_api.url}/docs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    dom = done.stdout
    assert done.returncode == 0, done.stderr[-3000:]

    # Every operation of the document is on the page (Swagger UI's ids: operations-<tag>-<operationId>).
    spec = httpx.get(f"{live_api.url}/openapi.json", timeout=60).json()
    op_ids = [op["operationId"] for item in spec["paths"].values() for op in item.values()]
    rendered = set(re.findall(r'id="operations-[^"]*?-([a-z0-9_]+)"', dom))
    assert len(op_ids) > 60
    missing = [op for op in op_ids if op not in rendered]
    assert not missing, f"not rendered: {missing}; page starts {dom[:2000]}"

    # Nothing on the page points off the machine, and every request the page made stayed on it.
    for ref in re.findall(r'(?:src|href)="([^"#][^"]*)"', dom):
        host = urlsplit(ref).hostname
        assert host in (None, "127.0.0.1"), ref
    requests = _page_requests(netlog, live_api.url)
    assert {urlsplit(u).path for u in requests} >= {
        "/docs",
        "/openapi.json",
        "/static-offline-docs/swagger-ui-bundle.js",
        "/static-offline-docs/swagger-ui.css",
    }, requests
    off_host = [u for u in requests if urlsplit(u).hostname != "127.0.0.1"]
    assert not off_host, off_host
