"""``rpa_common.nats.publisher.Publisher`` against a NATS server that goes away and comes back.

A message published while NATS is down is logged (``nats.publish_failed``, warning), held, and
published again once the connection is back, in order; it is not left in the client's reconnect
buffer, which would flush it before the subscribers have subscribed again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from structlog.testing import capture_logs

from rpa_common.nats.client import connect
from rpa_common.nats.publisher import Publisher
from tests.e2e.nats_outage import NatsServer
from tests.support import eventually

pytestmark = [pytest.mark.timeout(60)]


async def test_a_message_published_during_an_outage_is_logged_held_and_sent_after(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats.log")
    server.start()
    publisher_nc = await connect(server.url, "test-publisher")
    listener_nc = await connect(server.url, "test-listener")
    received: list[bytes] = []

    async def on_msg(msg: Msg) -> None:
        received.append(msg.data)

    await listener_nc.subscribe("test.outage", cb=on_msg)
    await listener_nc.flush()
    publisher = Publisher(publisher_nc, retry_after_s=0.3)
    try:
        assert await publisher.publish("test.outage", b"before")
        await eventually(lambda: _async(received == [b"before"]), 5, "the first message")

        server.stop()
        await eventually(lambda: _async(not publisher_nc.is_connected), 5, "the client to notice")
        with capture_logs() as logs:
            assert not await publisher.publish("test.outage", b"during-1")
            assert not await publisher.publish("test.outage", b"during-2")
        failed = [e for e in logs if e["event"] == "nats.publish_failed"]
        assert [(e["log_level"], e["subject"]) for e in failed] == [("warning", "test.outage")] * 2
        assert publisher.held == 2

        server.start()
        # Sent again once both ends are back, oldest first, and nothing is sent twice.
        await eventually(lambda: _async(len(received) >= 3), 15, "the held messages")
        await asyncio.sleep(0.5)
        assert received == [b"before", b"during-1", b"during-2"]
        assert publisher.held == 0
        # A message after the outage does not jump ahead of held ones, and goes at once now.
        assert await publisher.publish("test.outage", b"after")
        await eventually(lambda: _async(received[-1] == b"after"), 5, "the next message")
    finally:
        await publisher.close()
        for nc in (publisher_nc, listener_nc):
            await nc.close()
        server.stop()


async def _async(value: bool) -> bool:
    return value
