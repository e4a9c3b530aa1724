"""A TCP proxy a test controls: a database outage for one app, without touching the shared servers.

``down()`` closes every open connection and the listening port (clients see "connection refused",
as when the database stops); ``hang()`` keeps accepting but forwards nothing and answers nothing
(a network partition, or a server that stopped answering); ``hold_answers()`` still forwards what
clients send but holds what the server answers (work done whose answers are not out yet); ``up()``
forwards again.
"""

from __future__ import annotations

import asyncio
import contextlib

from tests.support import free_port


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._hanging = False
        self._holding_answers = False

    async def up(self) -> None:
        self._hanging = False
        self._holding_answers = False
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def down(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._drop_all()

    async def hang(self) -> None:
        """Accept connections but let nothing through either way (open ones go silent too)."""
        self._hanging = True
        await self.up()
        self._hanging = True

    def hold_answers(self) -> None:
        """Forward client -> server, hold server -> client (until ``up()``, or lost with ``down()``)."""
        self._holding_answers = True

    async def close(self) -> None:
        await self.down()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self._hanging:
            return  # keep the socket open, say nothing
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        for src, dst, answers in ((reader, up_writer, False), (up_reader, writer, True)):
            task = asyncio.create_task(self._pipe(src, dst, answers))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, answers: bool = False
    ) -> None:
        try:
            while data := await src.read(65536):
                # A silent network (or held answers): hold the bytes until up() or down().
                while self._hanging or (answers and self._holding_answers):
                    if dst.transport.is_closing():
                        return
                    await asyncio.sleep(0.02)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.transport.abort()
