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

import uvloop

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
                        json.dumps(
                            {
                                "type": "hello",
                                "seq": 0,
                                "protocol": 1,
                                "robot_version": "bench-1.0",
                                "machine": f"bench-{source}-{index}",
                                "capabilities": ["jobs"],
                                "attended": False,
                            }
                        )
                    )
                    welcome = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    if welcome.get("type") != "welcome":
                        raise RuntimeError(f"expected welcome, got {welcome}")
                    interval = float(welcome.get("heartbeat_interval_s") or interval)
                    conns.append(ws)
                    return
                except (OSError, TimeoutError, websockets.WebSocketException, RuntimeError) as exc:
                    if attempt == 4:
                        failed += 1
                        print(f"robot {index} failed: {exc!r}", file=sys.stderr, flush=True)
                    await asyncio.sleep(0.5 * (attempt + 1))

    await asyncio.gather(*(one(i, k) for i, k in enumerate(keys)))
    print(f"ready {len(conns)} {failed}", flush=True)

    heartbeat = json.dumps({"type": "heartbeat", "seq": 0, "job_id": None})
    sent = 0

    async def heartbeats() -> None:
        # Every robot once per interval, spread evenly (as many robots started at different times).
        nonlocal sent
        while True:
            started = loop.time()
            for i, ws in enumerate(list(conns)):
                delay = started + interval * i / max(1, len(conns)) - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                with contextlib.suppress(websockets.ConnectionClosed):
                    await ws.send(heartbeat)
                    sent += 1
            await asyncio.sleep(max(0.0, started + interval - loop.time()))

    beats = asyncio.create_task(heartbeats())
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    beats.cancel()
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


def main() -> None:
    role = sys.argv[1]
    if role == "idle-robots":
        uvloop.run(idle_robots())
    elif role == "floor-ws":
        uvloop.run(floor_ws(int(sys.argv[2])))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
