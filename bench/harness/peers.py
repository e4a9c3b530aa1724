"""Light peer processes for the benchmarks: robot clients and bare servers.

Run as ``python -m harness.peers <role> ...`` with ``bench/`` as the working directory's import
root; they import only ``websockets``/``uvloop``, so many start fast and stay small. Secrets (robot
keys) come on stdin, never on the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

import uvloop

from rpa_protocol import PROTOCOL_VERSION, Heartbeat, Hello, encode

# Client process ----------------------------------------------------------------------------------


async def idle_robots() -> None:
    """One client process: its share of the robots, from a JSON job on stdin; stops at stdin EOF.

    Prints ``ready <connected> <failed>`` once every robot of its share has its ``welcome``, and
    ``done <still_open> <heartbeats_sent> <closed_early>`` when told to stop.
    """
    import websockets
    from websockets.asyncio.client import ClientConnection, connect

    job = json.loads(sys.stdin.readline())
    url: str = job["url"]
    keys: list[str] = job["keys"]
    source: str = job["source"]
    compression = "deflate" if job["compression"] == "deflate" else None
    loop = asyncio.get_running_loop()
    conns: list[ClientConnection] = []
    failed = 0
    limiter = asyncio.Semaphore(job["concurrency"])
    interval = 15.0
    heartbeat = encode(Heartbeat())
    beats: list[asyncio.Task[None]] = []
    sent = 0

    async def heartbeats(ws: ClientConnection) -> None:
        # As a robot does: every heartbeat_interval_s from its welcome on.
        nonlocal sent
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await asyncio.sleep(interval)
                await ws.send(heartbeat)
                sent += 1

    async def one(index: int, key: str) -> None:
        nonlocal failed, interval
        async with limiter:
            for attempt in range(5):
                try:
                    # The reference robot's options (robot/rpa_robot/client.py), plus a source address.
                    ws = await connect(
                        url,
                        additional_headers={"Authorization": f"Bearer {key}"},
                        open_timeout=60,
                        ping_interval=20,
                        ping_timeout=20,
                        max_size=16 * 1024 * 1024,
                        compression=compression,
                        local_addr=(source, 0),
                    )
                    await ws.send(
                        encode(
                            Hello(
                                protocol=PROTOCOL_VERSION,
                                robot_version="bench-1.0",
                                machine=f"bench-{source}-{index}",
                                capabilities=["jobs"],
                            )
                        )
                    )
                    welcome = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    if welcome.get("type") != "welcome":
                        raise RuntimeError(f"expected welcome, got {welcome}")
                    interval = float(welcome.get("heartbeat_interval_s") or interval)
                    conns.append(ws)
                    beats.append(asyncio.create_task(heartbeats(ws)))
                    return
                except (OSError, TimeoutError, websockets.WebSocketException, RuntimeError) as exc:
                    if attempt == 4:
                        failed += 1
                        print(f"robot {index} failed: {exc!r}", file=sys.stderr, flush=True)
                    await asyncio.sleep(0.5 * (attempt + 1))

    await asyncio.gather(*(one(i, k) for i, k in enumerate(keys)))
    print(f"ready {len(conns)} {failed}", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    for task in beats:
        task.cancel()
    still_open = sum(1 for ws in conns if ws.state.name == "OPEN")
    print(f"done {still_open} {sent} {len(conns) - still_open}", flush=True)
    await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)


# Floor server ------------------------------------------------------------------------------------


async def floor_ws(port: int) -> None:
    """A bare ``websockets`` server: takes ``hello``, answers a fixed ``welcome``, reads the rest."""
    from websockets.asyncio.server import ServerConnection, serve

    welcome = json.dumps(
        {"type": "welcome", "seq": 0, "protocol": 1, "heartbeat_interval_s": 15.0, "resume": None}
    )

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(welcome)
        async for _ in ws:
            pass

    async with serve(handler, "127.0.0.1", port, compression=None, backlog=4096):
        await asyncio.Future()


# Dispatch floor ----------------------------------------------------------------------------------

FLOOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS floor_job (
    id uuid PRIMARY KEY,
    state text NOT NULL DEFAULT 'pending',
    robot int,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS floor_job_pending ON floor_job (created_at) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS floor_robot (id int PRIMARY KEY, job uuid);
"""


async def floor_claimer(nats_url: str) -> None:
    """The least a dispatcher does, with bare asyncpg and nats-py: on ``floor.created`` claim the
    oldest pending job and a free robot (``FOR UPDATE SKIP LOCKED``), commit, publish the offer on
    ``floor.robot.<n>``; on ``floor.done`` end the job and free its robot. Stops on SIGTERM.

    The database URL comes in ``BENCH_FLOOR_DSN`` (it may hold a password: never on a command line).
    """
    import os
    import signal
    import uuid

    import asyncpg
    import nats

    pool = await asyncpg.create_pool(os.environ["BENCH_FLOOR_DSN"], min_size=2, max_size=4)
    nc = await nats.connect(nats_url)
    wake = asyncio.Event()

    async def claim_one() -> bool:
        async with pool.acquire() as conn, conn.transaction():
            job = await conn.fetchval(
                "SELECT id FROM floor_job WHERE state = 'pending' ORDER BY created_at"
                " LIMIT 1 FOR UPDATE SKIP LOCKED"
            )
            if job is None:
                return False
            robot = await conn.fetchval(
                "SELECT id FROM floor_robot WHERE job IS NULL ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
            )
            if robot is None:
                return False
            await conn.execute(
                "UPDATE floor_job SET state = 'starting', robot = $2 WHERE id = $1", job, robot
            )
            await conn.execute("UPDATE floor_robot SET job = $2 WHERE id = $1", robot, job)
        await nc.publish(f"floor.robot.{robot}", job.bytes)
        return True

    async def claimer() -> None:
        while True:
            await wake.wait()
            wake.clear()
            while await claim_one():
                pass

    async def on_created(msg: Any) -> None:
        wake.set()

    async def on_done(msg: Any) -> None:
        job = uuid.UUID(bytes=msg.data)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE floor_job SET state = 'done' WHERE id = $1", job)
            await conn.execute("UPDATE floor_robot SET job = NULL WHERE job = $1", job)
        wake.set()

    await nc.subscribe("floor.created", cb=on_created)
    await nc.subscribe("floor.done", cb=on_done)
    task = asyncio.create_task(claimer())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await nc.flush()
    print("ready", flush=True)
    await stop.wait()
    task.cancel()
    await nc.drain()
    await pool.close()


# API floor ---------------------------------------------------------------------------------------


def floor_asgi(port: int) -> None:
    """A bare uvicorn app: one process, the options the services run with, a plain ASGI callable."""
    import uvicorn

    body = b'{"status":"ok"}'
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(start)
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")


# A gateway under tracemalloc ---------------------------------------------------------------------


def traced_gateway(out_dir: str) -> None:
    """``python -m rpa_gateway serve`` with tracemalloc on: each SIGUSR1 writes a snapshot to
    ``out_dir/snapshot-<n>.pickle`` (``robots_idle.py --trace`` compares the one taken before the
    robots with the one taken after). Allocations by C libraries through Python's allocators (zlib's
    compressors among them) are traced too."""
    import itertools
    import signal
    import tracemalloc
    from pathlib import Path

    tracemalloc.start(1)  # the allocating line is enough to group by
    counter = itertools.count(1)

    def dump(signum: int, frame: Any) -> None:
        path = Path(out_dir) / f"snapshot-{next(counter)}.pickle"
        tracemalloc.take_snapshot().dump(str(path))
        path.with_suffix(".done").touch()

    signal.signal(signal.SIGUSR1, dump)
    from rpa_gateway.__main__ import main as gateway_main

    gateway_main(["serve"])


# PgQueuer anchor ---------------------------------------------------------------------------------


async def pgq_worker() -> None:
    """One PgQueuer worker process, as PgQueuer's own docs set one up: a ``QueueManager`` on one
    asyncpg connection, one entrypoint (``lifecycle``) that does no work, so that what is measured
    is PgQueuer's take and finish (its dequeue, then its status log, which deletes the job row).

    The database URL comes in ``BENCH_PGQ_DSN``, the dequeue batch size in ``BENCH_PGQ_BATCH``.
    Prints ``ready``; stops on SIGTERM. Needs the ``bench`` dependency group (``pgqueuer``).
    """
    import os
    import signal
    from datetime import timedelta

    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager

    conn = await asyncpg.connect(os.environ["BENCH_PGQ_DSN"])
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint("lifecycle")
    async def lifecycle(job: Any) -> None:
        return None

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, qm.shutdown.set)
    print("ready", flush=True)
    await qm.run(
        batch_size=int(os.environ.get("BENCH_PGQ_BATCH", "10")),
        dequeue_timeout=timedelta(seconds=1),
    )
    await conn.close()


def main() -> None:
    role = sys.argv[1]
    if role == "idle-robots":
        uvloop.run(idle_robots())
    elif role == "floor-claimer":
        uvloop.run(floor_claimer(sys.argv[2]))
    elif role == "floor-asgi":
        floor_asgi(int(sys.argv[2]))
    elif role == "traced-gateway":
        traced_gateway(sys.argv[2])
    elif role == "floor-ws":
        uvloop.run(floor_ws(int(sys.argv[2])))
    elif role == "pgq-worker":
        uvloop.run(pgq_worker())
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
