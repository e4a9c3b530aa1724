"""A real HTTP receiver of webhooks on loopback, for the tests: it checks each delivery's signature
with the documented algorithm (``rpa_common.webhooks.verify``), keeps what it got, and can be told
to fail (a status, a Retry-After) or to hang, as a real endpoint may."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rpa_common import webhooks
from tests.support import free_port


@dataclass
class Received:
    event_id: int
    event_type: str
    body: dict[str, Any]
    signed: bool
    status: int


@dataclass
class Receiver:
    secret: str = ""
    fail_first: int = 0
    fail_status: int = 503
    retry_after: str | None = None
    always_fail: bool = False
    hang: asyncio.Event | None = None
    calls: list[Received] = field(default_factory=list)
    arrived: list[int] = field(default_factory=list)
    """Event ids of every request as it came in (answered or not)."""
    url: str = ""

    @property
    def delivered_ids(self) -> list[int]:
        """Event ids answered 2xx, in the order they came."""
        return [c.event_id for c in self.calls if c.status == 200]

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        header = request.headers.get(webhooks.SIGNATURE_HEADER, "")
        signed = bool(self.secret) and webhooks.verify(self.secret, header, body)
        parsed = json.loads(body)
        failing = self.always_fail or len(self.calls) < self.fail_first
        status = self.fail_status if failing else (200 if signed else 401)
        self.arrived.append(parsed["id"])
        if self.hang is not None:
            await self.hang.wait()
        self.calls.append(Received(parsed["id"], parsed["type"], parsed, signed, status))
        headers = {"Retry-After": self.retry_after} if failing and self.retry_after else {}
        return Response(status_code=status, headers=headers)


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    port = free_port()
    app = Starlette(routes=[Route("/hook", receiver.handle, methods=["POST"])])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    receiver.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield receiver
    finally:
        if receiver.hang is not None:
            receiver.hang.set()
        server.should_exit = True
        await task
