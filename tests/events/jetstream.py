"""A ``nats-server -js`` of the test's own (the shared NATS is shared: its streams are not ours)."""

from __future__ import annotations

import shutil
import subprocess  # nosec B404: the test's own nats-server
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js.api import DeliverPolicy

from rpa_common import events
from tests.support import free_port

NATS_BIN = shutil.which("nats-server") or "nats-server"


class JetStreamServer:
    """Stop and start again on the same port and store: the stream survives."""

    def __init__(self) -> None:
        self.port = free_port()
        self.store = Path(tempfile.mkdtemp(prefix="rpa-js-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(  # nosec B603: fixed argv
            [NATS_BIN, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import socket

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError(f"nats-server -js did not start on {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.store, ignore_errors=True)


async def connect(url: str) -> NATS:
    return await nats.connect(
        url,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
        allow_reconnect=True,
        name=f"t-{uuid.uuid4().hex[:6]}",
    )


async def stored(nc: NATS, account_id: uuid.UUID, timeout: float = 1.0) -> list[tuple[int, dict[str, Any]]]:
    """Every event of the account in the stream: (sequence, JSON) in order."""
    import json

    js = nc.jetstream()
    sub = await js.subscribe(
        events.account_subjects(account_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    out: list[tuple[int, dict[str, Any]]] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except (TimeoutError, nats.errors.TimeoutError):
                return out
            out.append((msg.metadata.sequence.stream, json.loads(msg.data)))
    finally:
        await sub.unsubscribe()
