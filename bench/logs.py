"""Benchmark: robot log lines through the gateway into PostgreSQL, and a plain COPY as the ceiling.

Runs on its own::

    .venv/bin/python bench/logs.py [--robots 1000] [--clients 2] [--rate 50000] [--batch 100]
                                   [--seconds 30] [--warmup 5] [--json PATH]
                                   [--gateway-env RPA_X=VALUE ...] [--ids v7|v4]

It starts everything it needs: a private NATS server, a fresh database on the local PostgreSQL (or
``RPA_DB_URL``'s server; PostgreSQL, since the anchor is COPY) built from the migrations, ONE robot
gateway (``--gateways N``: N gateway processes, the robots' client processes split over them as a
deployment scales out) and ONE API process (one worker), as real processes. Robots are inserted in the database
directly (keys made and hashed as the API makes them).

The load: ``--robots`` simulated robots, split over ``--clients`` client processes (this script
with ``--role robots``; their keys reach them in a file readable by this user only, never on a
command line), each a real WebSocket speaking protocol v1 (``hello`` with ``jobs`` and ``logs``,
then ``log`` frames of ``--batch`` lines, sequenced, acknowledged by the gateway after its commit).
Together they offer ``--rate`` lines a second (open loop: each robot sends a frame every
``robots * batch / rate`` seconds, phases spread, and does not wait for the ack, as the reference
robot does not); ``--rate 0`` sends as fast as the acks come (each robot keeps two frames unacked).
Lines look like a script's: a message of about 70 characters, levels mixed, one line in five with
``fields``.

Measured over ``--seconds`` after ``--warmup``:

- lines/s persisted: lines acknowledged (an ack follows the commit) in the window / its length;
- queryable p99: this process runs one more robot on the same gateway, which sends a frame every
  0.5 s holding one ``Critical`` marker line, and polls the real API
  (``GET /api/v1/logs?robot_id=...&min_level=Critical``) every 100 ms; a marker's time is from
  just before its frame is sent to the poll answer that first holds it.

The anchor, in the same run, after the gateway side (the machine to itself): the same number of
rows, the same columns and shape, COPYed by one asyncpg connection (``copy_records_to_table``, 20,000
rows a statement) into the same ``robot_message`` table with its indexes. The table prints both and
the ratio; ``--json`` writes ``{"lines_per_s", "anchor_lines_per_s", "ratio", "queryable_p99_s"}``
plus the details, among them ``gateway_cpu_us_per_line``: the CPU time of the gateway process(es)
over the window divided by the lines acknowledged in it (the figure to compare on a busy machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvloop
import websockets
from harness.infra import (
    Services,
    bench_settings,
    bulk_robots,
    cpu_seconds,
    free_port,
    fresh_database,
    print_table,
    raise_fd_limit,
    ratio,
    seed_account,
    service_env,
    start_nats,
    start_service,
)

from rpa_protocol import PROTOCOL_VERSION, Hello, encode
from rpa_robot.ids import time_ordered_id

NEW_ID = time_ordered_id
"""Line ids as the reference robot makes them (time-ordered); ``--ids v4`` makes them random."""
LEVELS = ("Debug", "Info", "Info", "Info", "Warning", "Error")
WORDS = ("invoice", "order", "customer", "payment", "shipment", "ticket", "report", "record")


def _line(
    n: int,
    robot: int,
    at: str,
    level: str | None = None,
    message: str | None = None,
    ident: str | None = None,
) -> str:
    """One log entry as JSON text (built by hand: the client must not be the bottleneck)."""
    word = WORDS[n % len(WORDS)]
    text = message or f"robot {robot} step {n}: processed {word} {word[:3].upper()}-{n:08d} in {n % 97} ms"
    fields = f',"fields":{{"step":{n},"word":"{word}"}}' if n % 5 == 0 else ""
    return (
        f'{{"id":"{ident or NEW_ID()}","level":"{level or LEVELS[n % len(LEVELS)]}",'
        f'"message":"{text}"{fields},"at":"{at}"}}'
    )


def _frame(seq: int, entries: list[str]) -> str:
    return f'{{"type":"log","seq":{seq},"entries":[{",".join(entries)}]}}'


async def _hello(ws: Any, name: str) -> int:
    """``hello``; the ``welcome``'s ``resume.last_seq`` (where this robot's numbering goes on)."""
    hello = Hello(
        protocol=PROTOCOL_VERSION,
        robot_version="bench-1.0",
        machine=name,
        capabilities=["jobs", "logs"],
    )
    await ws.send(encode(hello))
    welcome = json.loads(await ws.recv())
    if welcome.get("type") != "welcome":
        raise RuntimeError(f"no welcome: {welcome}")
    return int((welcome.get("resume") or {}).get("last_seq") or 0)


# The simulated robots (client processes) ----------------------------------------------------------


class LoadRobot:
    def __init__(self, url: str, key: str, index: int) -> None:
        self.url, self.key, self.index = url, key, index
        self.ws: Any = None
        self.seq = 0
        self.acked_seq = 0
        self.sent_lines: dict[int, int] = {}  # seq -> lines
        self.n = 0
        self.acked_in_window = 0
        self.window = (0.0, 0.0)
        self.unacked = asyncio.Event()

    async def connect(self) -> None:
        for attempt in range(20):
            try:
                self.ws = await websockets.connect(
                    self.url,
                    additional_headers={"Authorization": f"Bearer {self.key}"},
                    max_size=2**24,
                    compression=None,
                    open_timeout=60,
                    ping_interval=None,
                )
                break
            except websockets.InvalidStatus as exc:
                # 503 while the gateway checks a thousand keys at once (its pool waits): come back.
                if exc.response.status_code != 503 or attempt == 19:
                    raise
                await asyncio.sleep(random.uniform(0.5, 2.0))
        self.seq = await _hello(self.ws, f"bench-{self.index}")
        self.acked_seq = self.seq

    async def read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await self._read()

    async def _read(self) -> None:
        async for raw in self.ws:
            doc = json.loads(raw)
            if doc.get("type") != "ack":
                if doc.get("type") == "error":
                    print(f"robot {self.index}: error {doc}", file=sys.stderr, flush=True)
                continue
            upto = int(doc["seq"])
            now = time.time()
            for seq in range(self.acked_seq + 1, upto + 1):
                lines = self.sent_lines.pop(seq, 0)
                if self.window[0] <= now <= self.window[1]:
                    self.acked_in_window += lines
            self.acked_seq = max(self.acked_seq, upto)
            self.unacked.set()

    async def send(self, batch: int) -> None:
        self.seq += 1
        at = datetime.now(UTC).isoformat()
        entries = []
        for _ in range(batch):
            self.n += 1
            entries.append(_line(self.n, self.index, at))
        self.sent_lines[self.seq] = batch
        await self.ws.send(_frame(self.seq, entries))

    async def open_loop(self, batch: int, every_s: float, until: float) -> None:
        try:
            await self._open_loop(batch, every_s, until)
        except websockets.ConnectionClosed as exc:
            print(f"robot {self.index}: connection closed: {exc}", file=sys.stderr, flush=True)

    async def _open_loop(self, batch: int, every_s: float, until: float) -> None:
        await asyncio.sleep(random.uniform(0, every_s))
        next_at = time.monotonic()
        while time.time() < until:
            await self.send(batch)
            next_at += every_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def closed_loop(self, batch: int, until: float) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await self._closed_loop(batch, until)

    async def _closed_loop(self, batch: int, until: float) -> None:
        while time.time() < until:
            while self.seq - self.acked_seq >= 2:
                self.unacked.clear()
                await self.unacked.wait()
            await self.send(batch)


async def robots_role(args: argparse.Namespace) -> None:
    keys = json.loads(await asyncio.to_thread(Path(args.keys_file).read_text))
    robots = [LoadRobot(args.url, key, args.first + i) for i, key in enumerate(keys)]
    readers = []
    for start in range(0, len(robots), 50):  # not all at once: the gateway checks each key
        group = robots[start : start + 50]
        await asyncio.gather(*(r.connect() for r in group))
        # Reading from the start: the gateway's pings are answered while the others connect.
        readers += [asyncio.create_task(r.read()) for r in group]
    print("connected", flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)  # "window_start window_end"
    start_s, end_s = (float(v) for v in line.split())
    for r in robots:
        r.window = (start_s, end_s)
    cpu: list[float] = []

    async def window_cpu() -> None:  # this process's CPU time over the measured window
        await asyncio.sleep(max(0.0, start_s - time.time()))
        cpu.append(time.process_time())
        await asyncio.sleep(max(0.0, end_s - time.time()))
        cpu.append(time.process_time())

    meter = asyncio.create_task(window_cpu())
    if args.rate > 0:
        every = args.total_robots * args.batch / args.rate
        await asyncio.gather(*(r.open_loop(args.batch, every, end_s) for r in robots))
    else:
        await asyncio.gather(*(r.closed_loop(args.batch, end_s) for r in robots))
    await meter
    await asyncio.sleep(max(0.0, end_s + 1 - time.time()))
    behind = sum(r.seq - r.acked_seq for r in robots)
    print(
        json.dumps(
            {
                "acked_in_window": sum(r.acked_in_window for r in robots),
                "frames_behind": behind,
                "cpu_s": cpu[1] - cpu[0],
            }
        ),
        flush=True,
    )
    for task in readers:
        task.cancel()
    await asyncio.gather(*(r.ws.close() for r in robots), return_exceptions=True)


# The marker robot and the API poller (this process) -----------------------------------------------


async def markers(
    marker: LoadRobot, api_url: str, token: str, robot_id: uuid.UUID, start_s: float, end_s: float
) -> list[float]:
    """Marker frames from ``marker`` (connected before the load starts), and the API poller."""
    import httpx

    ws, seq = marker.ws, marker.seq
    sent: dict[str, float] = {}
    latencies: list[float] = []
    since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")

    async def send() -> None:
        nonlocal seq
        n = 0
        while time.time() < end_s:
            n += 1
            seq += 1
            marker = NEW_ID()
            at = datetime.now(UTC).isoformat()
            entries = [_line(n * 100 + i, -1, at) for i in range(49)]
            entries.insert(25, _line(n, -1, at, level="Critical", message=f"marker {n}", ident=str(marker)))
            sent[str(marker)] = time.time() if time.time() >= start_s else -1.0
            await ws.send(_frame(seq, entries))
            await asyncio.sleep(0.5)

    async def poll() -> None:
        async with httpx.AsyncClient(
            base_url=api_url, headers={"Authorization": f"Bearer {token}"}
        ) as client:
            while time.time() < end_s + 10 and (time.time() < end_s or any(sent.values())):
                r = await client.get(
                    "/api/v1/logs",
                    params={"robot_id": str(robot_id), "min_level": "Critical", "from": since, "limit": 200},
                )
                now = time.time()
                if r.status_code != 200:
                    print(f"API answered {r.status_code}: {r.text[:200]}", file=sys.stderr)
                    await asyncio.sleep(0.1)
                    continue
                for item in r.json()["items"]:
                    at = sent.pop(item["id"], None)
                    if at is not None and at > 0:
                        latencies.append(now - at)
                await asyncio.sleep(0.1)
        unseen = [m for m, at in sent.items() if at > 0]
        if unseen:
            print(f"{len(unseen)} markers never seen within 10 s of the end", file=sys.stderr)
            latencies.extend([float("inf")] * len(unseen))

    try:
        await asyncio.gather(send(), poll())
    finally:
        await ws.close()
    return latencies


# The anchor ---------------------------------------------------------------------------------------


async def anchor(db_url: str, account_id: uuid.UUID, robot_ids: list[uuid.UUID], rows: int) -> float:
    """Plain COPY of ``rows`` rows like the gateway's into the same table; rows/s."""
    import asyncpg

    dsn = db_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    columns = (
        "id", "account_id", "robot_id", "process_id", "process_version_id", "job_id", "task_id",
        "level", "message", "fields", "at", "received_at", "screenshot_id",
    )  # fmt: skip
    levels = {"Debug": 10, "Info": 20, "Warning": 30, "Error": 40, "Critical": 50}
    try:
        copied = 0
        elapsed = 0.0
        while copied < rows:
            n = min(20_000, rows - copied)
            now = datetime.now(UTC)
            records = []
            for i in range(copied, copied + n):
                doc = json.loads(_line(i, i % len(robot_ids), now.isoformat()))
                records.append(
                    (
                        uuid.UUID(doc["id"]), account_id, robot_ids[i % len(robot_ids)], None, None, None,
                        None, levels[doc["level"]], doc["message"],
                        json.dumps(doc["fields"]) if "fields" in doc else None, now, now, None,
                    )
                )  # fmt: skip
            started = time.perf_counter()
            async with conn.transaction():
                await conn.copy_records_to_table("robot_message", records=records, columns=columns)
            elapsed += time.perf_counter() - started
            copied += n
        return copied / elapsed
    finally:
        await conn.close()


def _rank(values: list[float], p: float) -> float:
    """Nearest-rank percentile: a marker never seen counts as infinitely late (no NaN from inf - inf)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(len(ordered) * p / 100) - 1))]


# The run ------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_fd_limit(args.robots * 2 + 1000)
    args.clients = max(args.clients, args.gateways)  # every gateway gets robots
    services = Services()
    try:
        nats_url = await start_nats(services)
        async with fresh_database("logs") as db_url:
            return await run_in(services, db_url, nats_url, args)
    finally:
        services.stop()


async def run_in(services: Services, db_url: str, nats_url: str, args: argparse.Namespace) -> dict[str, Any]:
    if not db_url.startswith("postgresql"):
        raise SystemExit("bench/logs.py needs PostgreSQL (its anchor is COPY)")
    settings = bench_settings(db_url, nats_url)
    account = await seed_account(settings)
    made = await bulk_robots(settings, account.account_id, args.robots + 1)
    marker_id, marker_key = made[-1]
    load = made[:-1]
    gw_ports, api_port = [free_port() for _ in range(args.gateways)], free_port()
    gw_envs = [
        service_env(
            db_url,
            nats_url,
            RPA_GATEWAY_PORT=str(port),
            RPA_HEARTBEAT_INTERVAL_S="60",
            RPA_JOB_LEASE_S="300",
            RPA_DB_POOL_SIZE="10",
            **dict(kv.split("=", 1) for kv in args.gateway_env),
        )
        for port in gw_ports
    ]
    gateways = [f"gateway-{g}" for g in range(args.gateways)]
    api_env = service_env(db_url, nats_url, RPA_API_PORT=str(api_port), RPA_API_WORKERS="1")
    await asyncio.gather(
        *(
            start_service(services, name, "rpa_gateway", env, port)
            for name, env, port in zip(gateways, gw_envs, gw_ports, strict=True)
        ),
        start_service(services, "api", "rpa_api", api_env, api_port),
    )
    gw_urls = [f"ws://127.0.0.1:{port}/robot/v1" for port in gw_ports]
    api_url = f"http://127.0.0.1:{api_port}"
    clients: list[subprocess.Popen[bytes]] = []
    key_dir = Path(tempfile.mkdtemp(prefix="rpa-bench-keys-"))
    script = str(Path(__file__).resolve())  # noqa: ASYNC240 - no I/O: a path made absolute
    per = -(-len(load) // args.clients)
    for c in range(args.clients):
        part = load[c * per : (c + 1) * per]
        if not part:
            continue
        keys_file = key_dir / f"keys-{c}.json"
        fd = os.open(keys_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump([key for _, key in part], f)
        argv = [
            sys.executable, script, "--role", "robots", "--url", gw_urls[c % len(gw_urls)],
            "--keys-file", str(keys_file), "--first", str(c * per), "--total-robots", str(len(load)),
            "--rate", str(args.rate), "--batch", str(args.batch), "--ids", args.ids,
        ]  # fmt: skip
        clients.append(
            services.start(
                f"robots-{c}", argv, dict(os.environ), stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
        )
    for proc in clients:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        if line.strip() != b"connected":
            raise RuntimeError(f"a client process did not connect its robots: {line!r}")
    marker = LoadRobot(gw_urls[0], marker_key, -1)
    await marker.connect()
    marker_reader = asyncio.create_task(marker.read())
    start_s = time.time() + 1 + args.warmup
    end_s = start_s + args.seconds
    gw_pids = [services.pid(name) for name in gateways]
    for proc in clients:
        assert proc.stdin is not None
        proc.stdin.write(f"{start_s} {end_s}\n".encode())
        proc.stdin.flush()
    await asyncio.sleep(max(0.0, start_s - time.time()))
    cpu0 = sum(cpu_seconds(pid) for pid in gw_pids)
    latencies = await markers(marker, api_url, account.token, marker_id, start_s, end_s)
    marker_reader.cancel()
    robots_cpu = 0.0
    acked = 0
    behind = 0
    for proc in clients:
        assert proc.stdout is not None
        out = json.loads(await asyncio.to_thread(proc.stdout.readline))
        acked += out["acked_in_window"]
        behind += out["frames_behind"]
        robots_cpu += out["cpu_s"]
        await asyncio.to_thread(proc.wait, 60)
    gw_cpu = sum(cpu_seconds(pid) for pid in gw_pids) - cpu0
    lines_per_s = acked / args.seconds
    for name in gateways:
        services.stop(name)
    services.stop("api")
    anchor_rows = max(100_000, min(acked, 1_000_000))
    anchor_per_s = await anchor(db_url, account.account_id, [rid for rid, _ in load], anchor_rows)
    p50, p99 = _rank(latencies, 50), _rank(latencies, 99)
    result = {
        "lines_per_s": round(lines_per_s, 1),
        "anchor_lines_per_s": round(anchor_per_s, 1),
        "ratio": round(lines_per_s / anchor_per_s, 3) if anchor_per_s else None,
        "queryable_p99_s": round(p99, 3),
        "queryable_p50_s": round(p50, 3),
        "markers": len(latencies),
        "offered_lines_per_s": args.rate or "as fast as acked",
        "frames_unacked_at_end": behind,
        "gateway_cpu_pct": round(100 * gw_cpu / args.seconds, 1),
        "gateway_cpu_us_per_line": round(1e6 * gw_cpu / (acked or 1), 1),
        "gateways": args.gateways,
        "line_ids": args.ids,
        "robots_cpu_us_per_line": round(1e6 * robots_cpu / (acked or 1), 1),
        "robots": args.robots,
        "batch": args.batch,
        "seconds": args.seconds,
    }
    print_table(
        f"Robot logs: {args.robots} robots -> {args.gateways} gateway(s) -> PostgreSQL (COPY), {args.seconds:g} s, line ids {args.ids}",
        [
            ("offered lines/s", result["offered_lines_per_s"]),
            ("lines/s persisted (acked)", result["lines_per_s"]),
            ("anchor: plain COPY lines/s", result["anchor_lines_per_s"]),
            ("ratio gateway / COPY", ratio(lines_per_s, anchor_per_s)),
            ("queryable p50 (s)", result["queryable_p50_s"]),
            ("queryable p99 (s)", result["queryable_p99_s"]),
            ("markers measured", len(latencies)),
            ("frames unacked at the end", behind),
            (f"gateway CPU (% of a core, {args.gateways} process(es))", result["gateway_cpu_pct"]),
            ("gateway CPU us per line", result["gateway_cpu_us_per_line"]),
            ("simulated robots' CPU us per line (all clients)", result["robots_cpu_us_per_line"]),
        ],
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--robots", type=int, default=1000, help="simulated robots")
    parser.add_argument("--clients", type=int, default=2, help="client processes the robots are split over")
    parser.add_argument(
        "--rate", type=float, default=50_000, help="lines/s offered in all (0: as fast as acked)"
    )
    parser.add_argument(
        "--gateways", type=int, default=1, help="gateway processes; client process c uses gateway c %% N"
    )
    parser.add_argument("--batch", type=int, default=100, help="lines per log frame")
    parser.add_argument("--seconds", type=float, default=30.0, help="the measured window")
    parser.add_argument("--warmup", type=float, default=5.0, help="load before the window, not measured")
    parser.add_argument(
        "--gateway-env", action="append", default=[], metavar="RPA_X=VALUE", help="a gateway setting"
    )
    parser.add_argument(
        "--ids",
        choices=["v7", "v4"],
        default="v7",
        help="line ids: time-ordered as the reference robot makes them (v7), or random (v4)",
    )
    parser.add_argument("--json", type=str, default=None, help="also write the summary as JSON here")
    # A client process of this benchmark (started by it).
    parser.add_argument("--role", choices=["main", "robots"], default="main", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--keys-file", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--total-robots", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global NEW_ID
    NEW_ID = time_ordered_id if args.ids == "v7" else uuid.uuid4
    if args.role == "robots":
        try:
            uvloop.run(robots_role(args))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(args.keys_file)
        return
    result = uvloop.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
