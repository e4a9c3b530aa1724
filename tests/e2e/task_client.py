"""A protocol-level robot for the task tests: the real WebSocket protocol, frames from ``rpa_protocol``.

It keeps a journal as the reference robot does (docs/robot-protocol.md 2.1): every reliable frame
(``task.add``, ``task.finish``...) stays in memory until an ``ack`` covers its ``seq``, and after a
reconnect the frames above the gateway's ``resume.last_seq`` are sent again, with the same ``seq``
and ``request_id``. Requests (``task.take``, ``task.renew``) are not journaled: a request whose
connection died is answered with ``ConnectionLost`` and the caller decides.

Used where a test must see the protocol itself: stale tokens, lost replies, a gateway killed
between a commit and its reply. Robots that run scripts are the real ``rpa_robot`` processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from typing import Any

import websockets
from pydantic import BaseModel

from rpa_protocol import PROTOCOL_VERSION, Hello, TaskAdd, TaskFinish, TaskItem, TaskRenew, TaskTake, encode

Reply = dict[str, Any]


class ConnectionLost(Exception):
    """The connection closed before a request's reply arrived."""


class TaskClient:
    def __init__(self, url: str, key: str, name: str = "task-client") -> None:
        self.url = url
        self.key = key
        self.name = name
        self.seq = 0
        self.acked = 0
        self.ws: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        # Reliable frames not acknowledged yet, by seq (sent again after a reconnect).
        self.journal: dict[int, BaseModel] = {}
        self.waiting: dict[uuid.UUID, asyncio.Future[Reply]] = {}
        self.reliable_ids: set[uuid.UUID] = set()
        self.errors: list[Reply] = []
        self.replies: list[Reply] = []  # every reply received, in order (duplicates included)
        self.replayed = 0  # reliable frames sent again after a reconnect

    # Connection ---------------------------------------------------------------------------------

    async def connect(self, timeout: float = 30) -> None:
        """Connect (retrying until ``timeout``), then send again what the gateway has not applied."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                ws = await websockets.connect(
                    self.url,
                    additional_headers={"Authorization": f"Bearer {self.key}"},
                    open_timeout=10,
                    compression=None,
                    max_size=2**24,
                )
                await ws.send(
                    encode(
                        Hello(
                            protocol=PROTOCOL_VERSION,
                            robot_version="test-1.0",
                            machine=self.name,
                            capabilities=["jobs", "tasks"],
                        )
                    )
                )
                welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
                break
            except (OSError, TimeoutError, websockets.WebSocketException):
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.2)
        assert welcome["type"] == "welcome", welcome
        assert "tasks" in welcome["capabilities"], f"the gateway does not grant tasks: {welcome}"
        last = int(welcome["resume"]["last_seq"])
        self._resumed(last)
        self._acked(last)
        self.seq = max(self.seq, last)
        self.ws = ws
        self.reader = asyncio.create_task(self._read(ws))
        for seq in sorted(self.journal):
            await ws.send(encode(self.journal[seq]))
            self.replayed += 1
        self.connected.set()

    def _acked(self, seq: int) -> None:
        self.acked = max(self.acked, seq)
        for s in [s for s in self.journal if s <= seq]:
            del self.journal[s]

    def _resumed(self, last_seq: int) -> None:
        """A welcome says every frame up to ``last_seq`` is applied: a reliable frame among them whose
        reply was lost with the old connection is not sent again, so it gets no reply; its caller
        hears ``{"resumed": true}`` (applied, answer lost)."""
        for s in [s for s in self.journal if s <= last_seq]:
            rid = getattr(self.journal[s], "request_id", None)
            fut = self.waiting.pop(rid, None) if rid is not None else None
            if fut is not None and not fut.done():
                fut.set_result({"request_id": str(rid), "seq": s, "resumed": True, "error": None})

    async def _read(self, ws: Any) -> None:
        try:
            async for raw in ws:
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "ack":
                    self._acked(int(frame["seq"]))
                elif kind == "error":
                    self.errors.append(frame)
                elif "request_id" in frame:
                    self.replies.append(frame)
                    fut = self.waiting.pop(uuid.UUID(frame["request_id"]), None)
                    if fut is not None and not fut.done():
                        fut.set_result(frame)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.connected.clear()
            # Requests die with the connection; reliable frames wait for the replay's reply.
            for rid, fut in list(self.waiting.items()):
                if rid not in self.reliable_ids and not fut.done():
                    fut.set_exception(ConnectionLost(self.name))
                    del self.waiting[rid]

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(BaseException):
                await self.reader

    async def abort(self) -> None:
        """Drop the TCP connection without a close handshake (as a killed process does)."""
        if self.ws is not None:
            self.ws.transport.abort()
        if self.reader is not None:
            with contextlib.suppress(BaseException):
                await self.reader

    # Frames -------------------------------------------------------------------------------------

    async def send(
        self, make: Callable[[int, uuid.UUID], BaseModel], *, reliable: bool, timeout: float = 30
    ) -> Reply:
        """Send ``make(seq, request_id)`` and wait for its reply (through reconnects when reliable)."""
        self.seq += 1
        rid = uuid.uuid4()
        frame = make(self.seq, rid)
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.waiting[rid] = fut
        if reliable:
            self.reliable_ids.add(rid)
            self.journal[self.seq] = frame
        if not self.connected.is_set():
            if not reliable:
                del self.waiting[rid]
                raise ConnectionLost(self.name)
        else:
            try:
                await self.ws.send(encode(frame))
            except websockets.ConnectionClosed:
                if not reliable:
                    self.waiting.pop(rid, None)
                    raise ConnectionLost(self.name) from None
        return await asyncio.wait_for(fut, timeout)

    async def add(self, queue: str, names: list[str], **fields: Any) -> Reply:
        items = [TaskItem(name=n, **fields) for n in names]
        return await self.send(
            lambda s, r: TaskAdd(seq=s, request_id=r, queue=queue, tasks=items), reliable=True
        )

    async def take(self, queue: str, lock_s: int | None = None) -> Reply:
        return await self.send(
            lambda s, r: TaskTake(seq=s, request_id=r, queue=queue, lock_s=lock_s), reliable=False
        )

    async def renew(self, task_id: str, token: int, lock_s: int | None = None) -> Reply:
        return await self.send(
            lambda s, r: TaskRenew(
                seq=s, request_id=r, task_id=uuid.UUID(task_id), lock_token=token, lock_s=lock_s
            ),
            reliable=False,
        )

    async def finish(
        self,
        task_id: str,
        token: int,
        outcome: str = "successful",
        output: dict[str, Any] | None = None,
        **kw: Any,
    ) -> Reply:
        return await self.send(
            lambda s, r: TaskFinish(
                seq=s,
                request_id=r,
                task_id=uuid.UUID(task_id),
                lock_token=token,
                outcome=outcome,
                output=output,
                **kw,
            ),
            reliable=True,
        )
