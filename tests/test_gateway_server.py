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
import uuid

import pytest
from websockets.asyncio.client import connect

from tests.conftest import ROOT, make_settings
from tests.support import free_port
from tests.test_services import service_env, wait_ready


def robot_key(db_url: str) -> str:
    """An unattended robot in a fresh account of the test database; its key."""
    from rpa_common.db.engine import create_engine, session_factory
    from rpa_common.db.uow import run_in_transaction
    from rpa_common.models import Account, Robot
    from rpa_common.models.enums import RobotRole
    from rpa_common.security import make_key

    key = make_key("rbk")

    async def run() -> None:
        engine = create_engine(make_settings(db_url), "tests", pool_size=1)
        try:

            async def work(session):  # type: ignore[no-untyped-def]
                account = Account(id=uuid.uuid4(), name=f"ws-{uuid.uuid4().hex[:8]}")
                session.add(account)
                await session.flush()
                session.add(
                    Robot(
                        id=uuid.uuid4(),
                        account_id=account.id,
                        name="ws-options",
                        role=RobotRole.UNATTENDED,
                        key_prefix=key.prefix,
                        key_hash=key.hash,
                    )
                )

            await run_in_transaction(session_factory(engine), work)
        finally:
            await engine.dispose()

    asyncio.run(run())
    return key.full


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
    key = robot_key(db_url)
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
