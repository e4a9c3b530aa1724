"""Benchmark: job dispatch latency, from the API accepting a job to a robot receiving ``job.start``.

Runs on its own::

    .venv/bin/python bench/dispatch.py [--robots 20] [--rate 100] [--seconds 10] [--json PATH]

It starts everything it needs: a private NATS server (other processes on a shared NATS would take
the scheduler's wake-ups), a fresh database on the local PostgreSQL (or ``RPA_DB_URL``'s server)
built from the migrations, and the API, the scheduler and the robot gateway as real processes.
Then N simulated robots connect over the real WebSocket protocol (hello, heartbeats, job.start ->
job.status running -> successful), and jobs for a group holding all robots are created through the
API at a fixed rate. Latency = time the robot received ``job.start`` - time the API's 201 response
was received (both on this process's monotonic clock). A robot may receive the job before the
HTTP response has reached the client; such jobs count as 0 ms (and are counted). CPU per job is
the user + system CPU of the three services over the run, divided by the jobs received.

By default (``--events both``) the real path runs twice, each time on a fresh database and NATS:
with the event outbox on (``RPA_EVENTS_ENABLED=true``: every job and robot state change also
inserts an outbox row in its transaction, and the scheduler relays the rows to the JetStream stream)
and off. The table gives CPU per job, throughput and latency for both and the ratios on / off: what
the event stream costs the job path. ``--events on`` or ``off`` runs one pass only.

Then, in the same run and with the services stopped, the floor: the same create -> claim ->
notify -> receive path with bare asyncpg and nats-py (see ``run_floor``), and the ratios.
``--json`` writes p50/p95/p99, throughput, robots, ``cpu_ms_per_job``, ``floor_p50_ms`` and
``floor_p99_ms`` (of the events-on pass), and with both passes ``events_on``, ``events_off`` (the
same fields each) and ``cpu_ms_per_job_ratio_on_off``, ``jobs_per_s_ratio_on_off``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import websockets
from harness.infra import (
    Seed,
    Services,
    bench_settings,
    cpu_seconds,
    free_port,
    fresh_database,
    peer,
    percentile,
    print_table,
    ratio,
    seed,
    service_env,
    start_nats,
    start_service,
)

from rpa_common.db.engine import create_engine, session_factory
from rpa_common.settings import Settings
from rpa_protocol import PROTOCOL_VERSION, Heartbeat, Hello, JobStatus, encode

SERVICES = ("api", "scheduler", "gateway")


# Simulated robots --------------------------------------------------------------------------------


@dataclass
class Results:
    accepted: dict[str, float] = field(default_factory=dict)
    received: dict[str, float] = field(default_factory=dict)
    api_errors: int = 0
    robot_errors: list[str] = field(default_factory=list)
    connected: int = 0


async def robot(url: str, key: str, index: int, results: Results, ready: asyncio.Event, total: int) -> None:
    """A minimal protocol-v1 robot: hello, heartbeats, take jobs, report them done at once."""
    headers = {"Authorization": f"Bearer {key}"}
    async with websockets.connect(url, additional_headers=headers, max_size=2**22, compression=None) as ws:
        await ws.send(
            encode(
                Hello(
                    protocol=PROTOCOL_VERSION,
                    robot_version="bench-1.0",
                    machine=f"bench-{index}",
                    capabilities=["jobs"],
                )
            )
        )
        welcome = json.loads(await ws.recv())
        if welcome.get("type") != "welcome":
            raise RuntimeError(f"robot {index}: expected welcome, got {welcome}")
        seq = int((welcome.get("resume") or {}).get("last_seq") or 0)
        interval = float(welcome.get("heartbeat_interval_s") or 15)
        results.connected += 1
        if results.connected == total:
            ready.set()

        async def heartbeats() -> None:
            while True:
                await asyncio.sleep(interval)
                await ws.send(encode(Heartbeat()))

        beat = asyncio.create_task(heartbeats())
        try:
            async for raw in ws:
                now = time.perf_counter()
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "job.start":
                    job_id = frame["job_id"]
                    results.received.setdefault(job_id, now)
                    for status in ("running", "successful"):
                        seq += 1
                        await ws.send(
                            encode(
                                JobStatus(
                                    seq=seq,
                                    job_id=job_id,
                                    attempt=frame["attempt"],
                                    status=status,
                                    output={} if status == "successful" else None,
                                )
                            )
                        )
                elif kind == "error":
                    results.robot_errors.append(str(frame.get("detail")))
        finally:
            beat.cancel()


async def create_jobs(api: str, s: Seed, rate: float, seconds: float, results: Results) -> float:
    """POST /jobs at a fixed rate (open loop: a slow answer does not delay the next request)."""
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    headers = {"Authorization": f"Bearer {s.token}"}
    body = {"process_id": str(s.process_id), "robot_group_id": str(s.group_id)}
    async with httpx.AsyncClient(base_url=api, headers=headers, limits=limits, timeout=30) as client:

        async def one() -> None:
            try:
                r = await client.post("/api/v1/jobs", json=body)
            except httpx.HTTPError:
                results.api_errors += 1
                return
            t = time.perf_counter()
            if r.status_code != 201:
                results.api_errors += 1
                if results.api_errors <= 3:
                    print(f"API answered {r.status_code}: {r.text[:300]}", file=sys.stderr)
                return
            results.accepted[r.json()["id"]] = t

        # Warm the connection pool and the services' code paths first (not measured).
        await client.get("/readyz")
        tasks = []
        n = int(rate * seconds)
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        return time.perf_counter() - start


async def server_side(settings: Settings, job_ids: list[str]) -> dict[str, float]:
    """From the job history: p50 of each step (created -> Starting -> Running -> Successful), in ms."""
    from rpa_common.models import Job, JobEvent

    engine = create_engine(settings, "bench", pool_size=1)
    try:
        async with session_factory(engine)() as session:
            rows = (
                await session.execute(
                    sa.select(Job.id, Job.created_at, JobEvent.to_state, JobEvent.at)
                    .join(JobEvent, JobEvent.job_id == Job.id)
                    .where(Job.id.in_([uuid.UUID(j) for j in job_ids]))
                )
            ).all()
    finally:
        await engine.dispose()
    at: dict[tuple[uuid.UUID, str], float] = {}
    for job_id, created, state, when in rows:
        at[(job_id, "created")] = created.timestamp()
        at[(job_id, str(state))] = when.timestamp()
    steps = {
        "pending": ("created", "Starting"),
        "starting": ("Starting", "Running"),
        "running": ("Running", "Successful"),
    }
    out: dict[str, float] = {}
    ids = {j for j, _ in at}
    for name, (a, b) in steps.items():
        waits = [(at[(j, b)] - at[(j, a)]) * 1000 for j in ids if (j, a) in at and (j, b) in at]
        out[f"{name}_p50"] = round(percentile(waits, 50), 2)
        out[f"{name}_p99"] = round(percentile(waits, 99), 2)
    return out


@contextlib.asynccontextmanager
async def environment(
    services: Services, events_enabled: bool = True, pool: dict[str, str] | None = None
) -> AsyncIterator[tuple[Settings, dict[str, str], str]]:
    """Private NATS, a fresh database, and the API, scheduler and gateway as real processes, with the
    event outbox on or off (``RPA_EVENTS_ENABLED``) and ``pool`` (``RPA_DB_POOL_SIZE``...) if given."""
    pool = pool or {}
    nats_url = await start_nats(services, jetstream=True)  # the scheduler relays events to a stream
    async with fresh_database("dispatch") as db_url:
        ports = {name: free_port() for name in SERVICES}
        env = service_env(
            db_url,
            nats_url,
            RPA_API_PORT=str(ports["api"]),
            RPA_GATEWAY_PORT=str(ports["gateway"]),
            RPA_SCHEDULER_PORT=str(ports["scheduler"]),
            RPA_HEARTBEAT_INTERVAL_S="15",
            RPA_EVENTS_ENABLED="true" if events_enabled else "false",
            **pool,
        )
        settings = bench_settings(db_url, nats_url)
        for name, module in (("api", "rpa_api"), ("scheduler", "rpa_scheduler"), ("gateway", "rpa_gateway")):
            await start_service(services, name, module, env, ports[name])
        urls = {
            "api": f"http://127.0.0.1:{ports['api']}",
            "gateway": f"ws://127.0.0.1:{ports['gateway']}/robot/v1",
        }
        try:
            yield settings, urls, db_url
        finally:
            for name in SERVICES:
                services.stop(name)
            services.stop("nats")


# The floor: the same path with bare asyncpg and nats-py ------------------------------------------


@dataclass
class Floor:
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    received: int = 0
    accepted: int = 0
    jobs_per_s: float = 0.0
    cpu_ms_per_job: float = float("nan")
    skipped: str | None = None


async def run_floor(services: Services, db_url: str, nats_url: str, args: argparse.Namespace) -> Floor:
    """Create -> claim -> notify -> receive with no web framework and no ORM.

    This process inserts a job row and publishes ``floor.created`` (the API's part); a claimer
    process (``harness.peers floor-claimer``) claims it and a free robot with ``FOR UPDATE SKIP
    LOCKED``, commits and publishes the offer on ``floor.robot.<n>``; here, one NATS subscription
    per robot receives it and answers ``floor.done`` (the robot's report), which frees the robot.
    Latency = offer received - insert committed and published, as for the real path.
    """
    import asyncpg
    import nats
    from harness.peers import FLOOR_SCHEMA

    floor = Floor()
    if not db_url.startswith(("postgresql://", "postgres://")):
        floor.skipped = "the floor uses asyncpg: PostgreSQL only"
        return floor
    dsn = db_url.replace("postgresql+asyncpg://", "postgresql://")
    setup = await asyncpg.connect(dsn)
    try:
        await setup.execute(FLOOR_SCHEMA)
        await setup.executemany(
            "INSERT INTO floor_robot (id) VALUES ($1)", [(i,) for i in range(args.robots)]
        )
    finally:
        await setup.close()
    claimer = peer(
        services,
        "floor-claimer",
        "floor-claimer",
        nats_url,
        env={"BENCH_FLOOR_DSN": dsn},
        stdout=subprocess.PIPE,
    )
    assert claimer.stdout is not None
    line = await asyncio.to_thread(claimer.stdout.readline)
    if line.strip() != b"ready":
        raise RuntimeError(f"floor claimer did not start: {line!r}")
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=20)
    nc = await nats.connect(nats_url)
    accepted: dict[uuid.UUID, float] = {}
    received: dict[uuid.UUID, float] = {}

    def robot_cb(index: int) -> Any:
        async def on_offer(msg: Any) -> None:
            now = time.perf_counter()
            job = uuid.UUID(bytes=msg.data)
            received.setdefault(job, now)
            await nc.publish("floor.done", msg.data)

        return on_offer

    try:
        for i in range(args.robots):
            await nc.subscribe(f"floor.robot.{i}", cb=robot_cb(i))
        await nc.flush()

        async def one() -> None:
            job = uuid.uuid4()
            async with pool.acquire() as conn:
                await conn.execute("INSERT INTO floor_job (id) VALUES ($1)", job)
            await nc.publish("floor.created", b"")
            accepted[job] = time.perf_counter()

        cpu0 = cpu_seconds(claimer.pid)
        n = int(args.rate * args.seconds)
        tasks = []
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and set(accepted) - set(received):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        latencies = [max(0.0, (received[j] - t) * 1000) for j, t in accepted.items() if j in received]
        floor.cpu_ms_per_job = (cpu_seconds(claimer.pid) - cpu0) * 1000 / max(1, len(latencies))
    finally:
        await nc.drain()
        await pool.close()
        services.stop("floor-claimer")
    floor.accepted, floor.received = len(accepted), len(latencies)
    floor.p50_ms = round(percentile(latencies, 50), 2)
    floor.p99_ms = round(percentile(latencies, 99), 2)
    floor.jobs_per_s = round(len(latencies) / elapsed, 1) if elapsed else 0.0
    return floor


# The benchmark -----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    services = Services()
    try:
        return await _run(services, args)
    finally:
        services.stop()


@dataclass
class Measure:
    """One pass of the real path: jobs through the API, scheduler and gateway to simulated robots."""

    events: bool
    report: dict[str, Any]
    rows: list[tuple[str, Any]]
    outbox_rows: int


async def _outbox_rows(settings: Settings) -> int:
    """Outbox rows left (events not relayed yet) at the end of a pass."""
    from rpa_common.models.events import EventOutbox

    engine = create_engine(settings, "bench", pool_size=1)
    try:
        async with session_factory(engine)() as session:
            return int(
                (await session.execute(sa.select(sa.func.count()).select_from(EventOutbox))).scalar_one()
            )
    finally:
        await engine.dispose()


async def _events_published(nats_url: str) -> int:
    """Messages in the event stream (0 when it does not exist)."""
    import nats
    from nats.js.errors import NotFoundError

    from rpa_common import events

    nc = await nats.connect(nats_url)
    try:
        return int((await nc.jetstream().stream_info(events.STREAM)).state.messages)
    except (NotFoundError, nats.js.errors.ServiceUnavailableError):
        return 0
    finally:
        await nc.close()


async def measure(
    services: Services, args: argparse.Namespace, events_enabled: bool, floor_too: bool
) -> tuple[Measure, Floor | None]:
    pids: dict[str, int] = {}
    floor: Floor | None = None
    pool = {}
    if args.db_pool_size is not None:
        pool["RPA_DB_POOL_SIZE"] = str(args.db_pool_size)
    if args.db_max_overflow is not None:
        pool["RPA_DB_MAX_OVERFLOW"] = str(args.db_max_overflow)
    async with environment(services, events_enabled, pool) as (settings, urls, db_url):
        pids = {name: services.pid(name) for name in SERVICES}
        s = await seed(settings, args.robots)
        results = Results()
        ready = asyncio.Event()
        robots = [
            asyncio.create_task(robot(urls["gateway"], key, i, results, ready, args.robots))
            for i, key in enumerate(s.robot_keys)
        ]
        try:
            async with asyncio.timeout(60):
                await ready.wait()
            await asyncio.sleep(1.0)  # let the Ready statuses settle
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            elapsed = await create_jobs(urls["api"], s, args.rate, args.seconds, results)
            # Wait for the last offers to arrive.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and set(results.accepted) - set(results.received):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # the last jobs' completion
            cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        finally:
            for task in robots:
                task.cancel()
            await asyncio.gather(*robots, return_exceptions=True)
            crashed = [t for t in robots if t.done() and not t.cancelled() and t.exception()]
        for t in crashed[:3]:
            print(f"robot failed: {t.exception()!r}", file=sys.stderr)
        if results.robot_errors:
            print(f"robot saw {len(results.robot_errors)} error frames, e.g. {results.robot_errors[0]}")
        server = await server_side(settings, list(results.accepted))
        outbox = await _outbox_rows(settings)
        published = await _events_published(settings.nats_url)
        latencies = [
            (results.received[j] - t) * 1000 for j, t in results.accepted.items() if j in results.received
        ]
        early = sum(1 for v in latencies if v < 0)
        latencies = [max(0.0, v) for v in latencies]
        missing = len(results.accepted) - len(latencies)
        # The services are stopped before the floor runs: it gets the machine to itself, as they did.
        for name in SERVICES:
            services.stop(name)
        if floor_too:
            floor = await run_floor(services, db_url, settings.nats_url, args)
    cpu = {name: (cpu_after[name] - cpu_before[name]) * 1000 / max(1, len(latencies)) for name in SERVICES}
    cpu_total = sum(cpu.values())
    report = {
        "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "jobs_per_s": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        "robots": args.robots,
        "cpu_ms_per_job": round(cpu_total, 2),
        "cpu_ms_per_job_by_service": {name: round(cpu[name], 2) for name in SERVICES},
        "events_published": published,
    }
    rows: list[tuple[str, Any]] = [
        ("jobs accepted by the API", len(results.accepted)),
        ("jobs received by robots", len(latencies)),
        ("jobs never received", missing),
        ("API errors", results.api_errors),
        ("received before the API answered", early),
        ("p50 latency (ms)", report["p50_ms"]),
        ("p95 latency (ms)", report["p95_ms"]),
        ("p99 latency (ms)", report["p99_ms"]),
        ("max latency (ms)", round(max(latencies), 2) if latencies else float("nan")),
        ("throughput (jobs/s)", report["jobs_per_s"]),
        ("db: created -> Starting p50/p99", f"{server['pending_p50']}/{server['pending_p99']}"),
        ("db: Starting -> Running p50/p99", f"{server['starting_p50']}/{server['starting_p99']}"),
        ("db: Running -> Successful p50/p99", f"{server['running_p50']}/{server['running_p99']}"),
        ("events in the stream / outbox rows left", f"{published}/{outbox}"),
    ]
    rows += [(f"CPU per job: {name} (ms)", round(cpu[name], 2)) for name in SERVICES]
    rows.append(("CPU per job: api + scheduler + gateway (ms)", round(cpu_total, 2)))
    return Measure(events_enabled, report, rows, outbox), floor


async def _run(services: Services, args: argparse.Namespace) -> dict[str, Any]:
    wanted = {"both": (True, False), "on": (True,), "off": (False,)}[args.events]
    passes: dict[bool, Measure] = {}
    floor: Floor | None = None
    for i, events_enabled in enumerate(wanted):
        last = i == len(wanted) - 1
        passes[events_enabled], got = await measure(services, args, events_enabled, floor_too=last)
        floor = got or floor
    assert floor is not None
    main_pass = passes.get(True) or passes[False]
    report = dict(main_pass.report)
    report["events"] = args.events
    report["floor_p50_ms"] = floor.p50_ms
    report["floor_p99_ms"] = floor.p99_ms
    rows: list[tuple[str, Any]] = []
    for events_enabled, m in passes.items():
        label = "events on" if events_enabled else "events off"
        rows += [(f"[{label}] {name}", value) for name, value in m.rows]
    if True in passes and False in passes:
        on, off = passes[True].report, passes[False].report
        report["events_on"] = on
        report["events_off"] = off
        report["cpu_ms_per_job_ratio_on_off"] = _ratio_value(on["cpu_ms_per_job"], off["cpu_ms_per_job"])
        report["jobs_per_s_ratio_on_off"] = _ratio_value(on["jobs_per_s"], off["jobs_per_s"])
        rows += [
            ("CPU per job, events on / off (ms)", f"{on['cpu_ms_per_job']} / {off['cpu_ms_per_job']}"),
            ("ratio CPU per job on / off", ratio(on["cpu_ms_per_job"], off["cpu_ms_per_job"])),
            ("throughput, events on / off (jobs/s)", f"{on['jobs_per_s']} / {off['jobs_per_s']}"),
            ("ratio throughput on / off", ratio(on["jobs_per_s"], off["jobs_per_s"])),
            ("p50 latency, events on / off (ms)", f"{on['p50_ms']} / {off['p50_ms']}"),
        ]
    if floor.skipped:
        rows.append(("floor", f"skipped: {floor.skipped}"))
    else:
        rows += [
            ("floor: jobs received / accepted", f"{floor.received}/{floor.accepted}"),
            ("floor: p50 latency (ms)", floor.p50_ms),
            ("floor: p99 latency (ms)", floor.p99_ms),
            ("floor: throughput (jobs/s)", floor.jobs_per_s),
            ("floor: CPU per job, claimer (ms)", round(floor.cpu_ms_per_job, 2)),
            ("ratio p50 / floor p50", ratio(report["p50_ms"], floor.p50_ms)),
            ("ratio p99 / floor p99", ratio(report["p99_ms"], floor.p99_ms)),
        ]
    print_table(
        f"Dispatch benchmark: {args.robots} robots, {args.rate:g} jobs/s offered for {args.seconds:g} s,"
        f" events {args.events}",
        rows,
    )
    print(
        "goal: p50 <= 10 ms, p99 <= 50 ms at 100 jobs/s, CPU per job (api + scheduler + gateway) <= 8 ms;"
        f" service logs in {services.log_dir}"
    )
    return report


def _ratio_value(value: float, base: float) -> float | None:
    return round(value / base, 3) if base else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--robots", type=int, default=20, help="simulated robots (one group)")
    parser.add_argument("--rate", type=float, default=100.0, help="jobs created per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long jobs are created")
    parser.add_argument(
        "--events",
        choices=("both", "on", "off"),
        default="both",
        help="the event outbox (RPA_EVENTS_ENABLED) on, off, or both one after the other (default)",
    )
    parser.add_argument(
        "--db-pool-size",
        type=int,
        default=None,
        help="RPA_DB_POOL_SIZE of each service (a database server shared with other work may be short"
        " of connections: each service may open pool + overflow)",
    )
    parser.add_argument(
        "--db-max-overflow", type=int, default=None, help="RPA_DB_MAX_OVERFLOW of each service"
    )
    parser.add_argument("--json", type=str, default=None, help="also write the summary as JSON here")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
