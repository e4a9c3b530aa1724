"""The gateway process's WebSocket server options: permessage-deflate only when configured.

A robot's connection is held for days by one gateway process among thousands; zlib's state for
permessage-deflate costs about 49 KiB of it (bench/robots_idle.py), so the gateway declines the
extension unless ``RPA_GATEWAY_WS_COMPRESSION`` is set. Checked on the real process, as a robot
sees it: the extension in the upgrade response, or not.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

import pytest
from websockets.asyncio.client import connect

from tests.conftest import ROOT
from tests.support import free_port
from tests.test_services import robot_key, service_env, wait_ready


async def negotiated_extensions(url: str, key: str) -> str | None:
    """Connect as the reference robot does (websockets' defaults offer permessage-deflate)."""
    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "hello",
                    "seq": 0,
                    "protocol": 1,
                    "robot_version": "test",
                    "machine": "test",
                    "capabilities": ["jobs"],
                }
            )
        )
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome", welcome
        assert ws.response is not None
        return ws.response.headers.get("Sec-WebSocket-Extensions")


@pytest.mark.parametrize("compression", [None, "true"], ids=["default", "compression-on"])
def test_gateway_declines_permessage_deflate_unless_configured(
    compression: str | None, db_url: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    key = robot_key(db_url, "unattended")
    port = free_port()
    extra = {"RPA_GATEWAY_PORT": str(port)}
    if compression is not None:
        extra["RPA_GATEWAY_WS_COMPRESSION"] = compression
    with open(tmp_path / "gateway.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rpa_gateway", "serve"],
            cwd=ROOT,
            env=service_env(db_url, **extra),
            stdout=log,
            stderr=log,
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
            offered = asyncio.run(negotiated_extensions(f"ws://127.0.0.1:{port}/robot/v1", key))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
    if compression is None:
        assert offered is None, f"the gateway accepted an extension by default: {offered}"
    else:
        assert offered is not None and offered.startswith("permessage-deflate"), offered
