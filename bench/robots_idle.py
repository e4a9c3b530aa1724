"""Benchmark: idle robots held by one gateway process — memory per connection and CPU.

Runs on its own::

    .venv/bin/python bench/robots_idle.py [--robots 10000] [--window 30] [--json PATH]

It starts a private NATS server, a fresh database on the local PostgreSQL (or ``RPA_DB_URL``'s
server) built from the migrations, and ONE robot gateway as a real process. The robots are
inserted in the database in bulk, with keys made and hashed as the API makes them. A few client
processes (``--clients``; the client side must not be the bottleneck) then connect them over the
real protocol, as the reference robot connects (same ``websockets`` options: permessage-deflate
offered, pings every 20 s): ``hello``, ``welcome``, then a ``heartbeat`` every
``heartbeat_interval_s`` from ``welcome`` (15 s) on, as a robot does.

Measured:

- memory per robot: the gateway's resident set size (RSS) once every robot is connected and a
  full measurement window of heartbeats has passed, minus its RSS before the first robot (after a
  small warm-up of connections that are closed again), divided by the number of robots;
- the gateway's CPU over the window (user + system, % of one core);
- the floor, in the same run: the same clients against a bare ``websockets`` server (one process,
  uvloop, no compression, answers ``hello`` with a fixed ``welcome``): its memory per connection.

Connections come from several loopback source addresses (127.0.0.x), so ephemeral ports never run
out, and the open-file limit is raised for this process and its children.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.infra import (
    Services,
    bench_settings,
    bulk_robots,
    cpu_seconds,
    free_port,
    fresh_database,
    peer,
    print_table,
    raise_fd_limit,
    ratio,
    rss_bytes,
    seed_account,
    service_env,
    start_nats,
    start_service,
    wait_port,
    wait_ready,
)

from rpa_protocol import PROTOCOL_VERSION, Heartbeat, Hello, encode

WARM_UP = 50
"""Robots connected and closed again before the baseline: the first connections import and
compile code paths (and fill caches) that later ones only reuse."""


# The benchmark -----------------------------------------------------------------------------------


@dataclass
class Phase:
    """One server under the same robots: what it cost."""

    connected: int = 0
    failed: int = 0
    rss_before: int = 0
    rss_after: int = 0
    cpu_pct: float = 0.0
    clients_cpu_pct: float = 0.0
    connect_s: float = 0.0
    still_open: int = 0
    heartbeats: int = 0

    def kb_per_conn(self) -> float:
        return (self.rss_after - self.rss_before) / 1024 / max(1, self.connected)


async def _read_line(proc: subprocess.Popen[bytes], want: str, within_s: float) -> list[str]:
    """The next stdout line of ``proc`` starting with ``want``, split (other lines are skipped)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), deadline - time.monotonic())
        if not line:
            raise RuntimeError(f"client process exited ({proc.poll()}) before '{want}'")
        parts = line.decode().split()
        if parts and parts[0] == want:
            return parts[1:]
    raise RuntimeError(f"no '{want}' from a client within {within_s}s")


async def hold_robots(
    services: Services,
    label: str,
    url: str,
    keys: list[str],
    server_pid: int,
    args: argparse.Namespace,
    at_end: Callable[[], Awaitable[None]] | None = None,
) -> Phase:
    """Connect ``keys`` from ``--clients`` processes, measure the server over the window, close."""
    phase = Phase()
    phase.rss_before = rss_bytes(server_pid)
    shares = [keys[i :: args.clients] for i in range(args.clients)]
    clients = []
    started = time.monotonic()
    for i, share in enumerate(shares):
        proc = peer(
            services, f"{label}-client-{i}", "idle-robots", stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert proc.stdin is not None
        # The keys go through a pipe: never on a command line, where any local user could read them.
        job = {
            "url": url,
            "keys": share,
            "source": f"127.0.0.{10 + i}",
            "compression": args.compression,
            "concurrency": args.concurrency,
        }
        proc.stdin.write((json.dumps(job) + "\n").encode())
        proc.stdin.flush()
        clients.append(proc)
    try:
        for proc in clients:
            ok, failed = await _read_line(proc, "ready", args.connect_timeout)
            phase.connected += int(ok)
            phase.failed += int(failed)
        phase.connect_s = time.monotonic() - started
        await asyncio.sleep(2)  # the last attaches' publishes and the first heartbeat flush
        cpu0 = cpu_seconds(server_pid)
        clients0 = sum(cpu_seconds(p.pid) for p in clients)
        t0 = time.monotonic()
        await asyncio.sleep(args.window)
        elapsed = time.monotonic() - t0
        phase.cpu_pct = (cpu_seconds(server_pid) - cpu0) / elapsed * 100
        phase.clients_cpu_pct = (sum(cpu_seconds(p.pid) for p in clients) - clients0) / elapsed * 100
        phase.rss_after = rss_bytes(server_pid)
        if at_end is not None:
            await at_end()
        for proc in clients:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in clients:
            still_open, sent, _closed = await _read_line(proc, "done", 60)
            phase.still_open += int(still_open)
            phase.heartbeats += int(sent)
    finally:
        for i in range(len(clients)):
            services.stop(f"{label}-client-{i}")
    return phase


async def take_snapshot(pid: int, trace_dir: Path) -> None:
    """Ask the traced gateway for a tracemalloc snapshot and wait until it is written."""

    def written() -> int:
        return len(os.listdir(trace_dir))

    before = written()
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 300
    while written() == before:
        if time.monotonic() > deadline:
            raise RuntimeError("the traced gateway wrote no snapshot")
        await asyncio.sleep(0.5)


def print_trace(trace_dir: Path, robots: int, top: int = 25) -> None:
    """Where the gateway's Python-visible memory per robot went: the largest growths between the
    snapshot before the robots and the one after, per source line and per file."""
    import tracemalloc

    first = tracemalloc.Snapshot.load(str(trace_dir / "snapshot-1.pickle"))
    second = tracemalloc.Snapshot.load(str(trace_dir / "snapshot-2.pickle"))
    n = max(1, robots)
    for key in ("filename", "lineno"):
        diff = second.compare_to(first, key)
        total = sum(d.size_diff for d in diff)
        print(f"\ntracemalloc, growth per robot by {key} (all: {total / n / 1024:.1f} KiB):")
        for d in diff[:top]:
            frame = d.traceback[0]
            where = frame.filename.split("site-packages/")[-1].split("/work/")[-1]
            if key == "lineno":
                where += f":{frame.lineno}"
            print(f"{d.size_diff / n:>10.0f} B {d.count_diff / n:>6.1f} blocks  {where}")
    print(f"snapshots in {trace_dir}")


async def warm_up(url: str, keys: list[str]) -> None:
    """Connect and close a few robots in this process (hello, welcome, one heartbeat)."""
    from websockets.asyncio.client import connect

    async def one(key: str) -> None:
        async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
            await ws.send(
                encode(
                    Hello(
                        protocol=PROTOCOL_VERSION,
                        robot_version="bench-1.0",
                        machine="bench-warm-up",
                        capabilities=["jobs"],
                    )
                )
            )
            await ws.recv()
            await ws.send(encode(Heartbeat()))

    await asyncio.gather(*(one(k) for k in keys))


async def registered(db_url: str, nats_url: str, within_s: float) -> tuple[int, int]:
    """Robots the database shows connected through a gateway, and those whose heartbeat was
    recorded within the last ``within_s`` seconds (by the database's clock)."""
    import sqlalchemy as sa

    from rpa_common.db.engine import create_engine
    from rpa_common.models import Robot

    engine = create_engine(bench_settings(db_url, nats_url), "bench", pool_size=1)
    try:
        async with engine.connect() as conn:
            connected = (
                await conn.execute(sa.select(sa.func.count()).where(Robot.gateway_id.is_not(None)))
            ).scalar_one()
            heard = (
                await conn.execute(
                    sa.select(sa.func.count()).where(
                        Robot.last_heartbeat_at >= sa.func.now() - sa.text(f"interval '{within_s:g} seconds'")
                    )
                )
            ).scalar_one()
    finally:
        await engine.dispose()
    return int(connected), int(heard)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    limit = raise_fd_limit(args.robots + 4096)
    if limit < args.robots + 256:
        raise SystemExit(
            f"the open-file limit is {limit}, too low for {args.robots} robots: raise it (ulimit -n)"
        )
    services = Services()
    try:
        nats_url = await start_nats(services)
        async with fresh_database("idle") as db_url:
            settings = bench_settings(db_url, nats_url)
            account = await seed_account(settings)
            robots = await bulk_robots(settings, account.account_id, args.robots + WARM_UP)
            keys = [key for _, key in robots]
            port = free_port()
            env = service_env(
                db_url,
                nats_url,
                RPA_GATEWAY_PORT=str(port),
                RPA_HEARTBEAT_INTERVAL_S=str(args.heartbeat),
                **dict(kv.split("=", 1) for kv in args.gateway_env),
            )
            if args.trace:
                trace_dir = Path(tempfile.mkdtemp(prefix="rpa-bench-trace-"))
                gw = peer(services, "gateway", "traced-gateway", str(trace_dir), env=env)
                await wait_ready(f"http://127.0.0.1:{port}/readyz", gw, "gateway", within_s=300)
            else:
                gw = await start_service(services, "gateway", "rpa_gateway", env, port)
            url = f"ws://127.0.0.1:{port}/robot/v1"
            await warm_up(url, keys[:WARM_UP])
            await asyncio.sleep(2)
            if args.trace:
                await take_snapshot(gw.pid, trace_dir)
            connected_db = heard_db = 0

            async def at_end() -> None:
                # While the robots are still connected: what the database shows of them.
                nonlocal connected_db, heard_db
                connected_db, heard_db = await registered(db_url, nats_url, args.heartbeat + 2)
                if args.trace:
                    await take_snapshot(gw.pid, trace_dir)

            gateway = await hold_robots(services, "gateway", url, keys[WARM_UP:], gw.pid, args, at_end)
            services.stop("gateway")

            floor_port = free_port()
            floor = peer(services, "floor", "floor-ws", str(floor_port))
            await wait_port(floor_port)
            await warm_up(f"ws://127.0.0.1:{floor_port}/", keys[:WARM_UP])
            await asyncio.sleep(1)
            bare = await hold_robots(
                services, "floor", f"ws://127.0.0.1:{floor_port}/", keys[WARM_UP:], floor.pid, args
            )
    finally:
        services.stop()

    kb = gateway.kb_per_conn()
    floor_kb = bare.kb_per_conn()
    report = {
        "robots": gateway.connected,
        "kb_per_robot": round(kb, 1),
        "floor_kb_per_conn": round(floor_kb, 1),
        "gateway_cpu_pct": round(gateway.cpu_pct, 1),
    }
    print_table(
        f"Idle robots benchmark: {args.robots} robots on one gateway, heartbeat every "
        f"{args.heartbeat:g} s, {args.window:g} s window, {args.clients} client processes, "
        f"compression offered: {args.compression}",
        [
            ("robots connected (welcome received)", gateway.connected),
            ("robots that failed to connect", gateway.failed),
            ("connect time, all robots (s)", round(gateway.connect_s, 1)),
            ("robots the database shows connected", connected_db),
            ("robots heard in the last heartbeat interval + 2 s", heard_db),
            ("still open at the end", gateway.still_open),
            ("heartbeats sent", gateway.heartbeats),
            ("gateway RSS before (MiB)", round(gateway.rss_before / 2**20, 1)),
            ("gateway RSS after (MiB)", round(gateway.rss_after / 2**20, 1)),
            ("gateway memory per robot (KiB)", round(kb, 1)),
            ("floor: bare websockets, per connection (KiB)", round(floor_kb, 1)),
            ("ratio gateway / floor (memory)", ratio(kb, floor_kb)),
            ("gateway CPU (% of one core)", round(gateway.cpu_pct, 1)),
            ("floor CPU (% of one core)", round(bare.cpu_pct, 1)),
            ("client processes CPU (% of one core, all)", round(gateway.clients_cpu_pct, 1)),
        ],
    )
    if args.trace:
        print_trace(trace_dir, gateway.connected)
    print(
        f"goal: {args.robots} robots at <= 50 KiB each, gateway CPU <= 20 % of a core; "
        f"logs in {services.log_dir}"
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--robots", type=int, default=10_000, help="idle robots to connect")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of measurement once connected")
    parser.add_argument("--heartbeat", type=float, default=15.0, help="heartbeat interval given to robots")
    parser.add_argument("--clients", type=int, default=4, help="client processes holding the robots")
    parser.add_argument("--concurrency", type=int, default=16, help="connects in flight per client")
    parser.add_argument("--connect-timeout", type=float, default=1800.0, help="seconds to connect them all")
    parser.add_argument(
        "--compression",
        choices=("deflate", "none"),
        default="deflate",
        help="what the robots offer: permessage-deflate (the reference robot's default) or nothing",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="RPA_X=V",
        help="an extra setting for the gateway process (repeatable), to compare configurations",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="run the gateway under tracemalloc and print where its memory per robot goes",
    )
    parser.add_argument("--json", type=str, default=None, help="also write the summary as JSON here")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
