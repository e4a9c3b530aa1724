"""Benchmark: task lifecycles (add, take, finish) through the robot gateway, and PgQueuer as the anchor.

Runs on its own::

    .venv/bin/python bench/tasks.py [--robots 20] [--tasks 20000] [--seconds 30] [--add-batch 10]
                                    [--json PATH] [--profile] [--gateway-only | --anchor-only]
                                    [--writers N] [--gateway-env RPA_X=VALUE ...]

It starts everything it needs: a private NATS server, a fresh database on the local PostgreSQL (or
``RPA_DB_URL``'s server, which must be PostgreSQL: the anchor is PostgreSQL-only) built from the
migrations, and ONE robot gateway as a real process. Robots and a queue are inserted in the
database directly (robot keys made and hashed as the API makes them).

The gateway side: N simulated robots connect over the real WebSocket protocol and speak it with the
``rpa_protocol`` frame models (``hello``, then ``task.add`` / ``task.take`` / ``task.finish`` and
their replies). Each robot, in a loop, adds ``--add-batch`` tasks in one ``task.add`` and then, for
as many tasks, takes the next task of the queue (``task.take`` -> ``task.taken``) and finishes it
as Successful (``task.finish`` -> ``task.finished``), with no work in between. A robot takes only
after its own adds were answered, so the queue never runs dry and every take returns a task (an
empty take is counted as an error). It stops when ``--tasks`` lifecycles are claimed or
``--seconds`` passed, whichever comes first. Measured:

- lifecycles/s: tasks finished (answered ``task.finished`` without error) / time from the first
  add to the last finish;
- take latency: from sending ``task.take`` to receiving its ``task.taken`` (p50/p95/p99/max);
- the gateway's CPU over the run (user + system, ``harness.infra.cpu_seconds``), per lifecycle and
  as % of one core; ``--profile`` attaches ``py-spy record`` to the gateway for the measured run
  (py-spy is not a dependency: any install of it, found on ``PATH`` or named by ``PY_SPY``), writes
  its collapsed stacks next to the service logs and prints where the gateway's CPU went.

The anchor, in the same run, with the gateway stopped (it gets the machine to itself as well):
the same lifecycle through PgQueuer on the same PostgreSQL, in the same database. N producers (this
process, one asyncpg pool) enqueue batches of ``--add-batch`` jobs with PgQueuer's ``Queries``
and keep the backlog below N x batch as the robots do; ONE worker process (``harness.peers
pgq-worker``, a ``QueueManager`` on one asyncpg connection with an entrypoint that does nothing)
dequeues (take) and logs each job done (finish: PgQueuer deletes the job row and writes its log).
A lifecycle ends when its row is gone. The table prints both, the ratio gateway / anchor, and
``--json`` writes ``{"lifecycles_per_s", "anchor_lifecycles_per_s", "ratio", "take_p99_ms"}``
plus the CPU figures.

PgQueuer is installed for the benchmark only: it is the ``bench`` dependency group of the root
``pyproject.toml`` (pinned in ``uv.lock``), NOT part of the product's dependencies nor of ``make
venv``. When ``import pgqueuer`` fails, this script runs ``.venv-tools/bin/uv sync --locked
--inexact --group bench`` once (``--inexact`` adds it without removing anything); the next ``make
venv`` that re-syncs removes it again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop
import websockets
from harness.infra import (
    ROOT,
    Services,
    bench_settings,
    bulk_robots,
    cpu_seconds,
    free_port,
    fresh_database,
    peer,
    percentile,
    print_table,
    seed_account,
    service_env,
    start_nats,
    start_service,
)

from rpa_common.db.engine import create_engine, session_factory
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Queue
from rpa_common.settings import Settings
from rpa_protocol import PROTOCOL_VERSION, Heartbeat, Hello, TaskAdd, TaskFinish, TaskItem, TaskTake, encode

QUEUE = "bench-tasks"


def ensure_pgqueuer() -> None:
    """Install the ``bench`` dependency group (PgQueuer) into this venv when it is missing."""
    if importlib.util.find_spec("pgqueuer") is not None:
        return
    uv = ROOT / ".venv-tools" / "bin" / "uv"
    if not uv.exists():
        raise SystemExit(f"{uv} is missing: run `make venv` first")
    print("installing the bench dependency group (pgqueuer) ...", file=sys.stderr, flush=True)
    env = {k: v for k, v in os.environ.items() if k not in ("UV_PROJECT_ENVIRONMENT", "VIRTUAL_ENV")}
    subprocess.run(
        [str(uv), "sync", "--locked", "--inexact", "--group", "bench"], cwd=ROOT, env=env, check=True
    )
    importlib.invalidate_caches()
    if importlib.util.find_spec("pgqueuer") is None:
        raise SystemExit("pgqueuer still not importable after `uv sync --group bench`")


# Shared bookkeeping ------------------------------------------------------------------------------


@dataclass
class Plan:
    """How many lifecycles are still to start, and until when."""

    remaining: int
    deadline: float

    def claim(self, batch: int) -> int:
        if time.perf_counter() >= self.deadline:
            return 0
        n = min(batch, self.remaining)
        self.remaining -= n
        return n


@dataclass
class Side:
    """One side's outcome."""

    finished: int = 0
    elapsed_s: float = float("nan")
    cpu_s: float = float("nan")
    errors: list[str] = field(default_factory=list)
    takes_ms: list[float] = field(default_factory=list)
    empty_takes: int = 0
    client_cpu_s: float = float("nan")  # the simulated robots (this process)

    @property
    def per_s(self) -> float:
        return round(self.finished / self.elapsed_s, 1) if self.elapsed_s and self.finished else 0.0

    @property
    def cpu_ms_per_lifecycle(self) -> float:
        return round(self.cpu_s * 1000 / self.finished, 3) if self.finished else float("nan")

    @property
    def cpu_pct(self) -> float:
        return round(self.cpu_s * 100 / self.elapsed_s, 1) if self.elapsed_s else float("nan")


# The gateway side --------------------------------------------------------------------------------


async def seed_queue(settings: Settings, robots: int) -> tuple[list[str], uuid.UUID]:
    """An account, ``robots`` robots (their keys), and the queue ``QUEUE``."""
    account = await seed_account(settings)
    made = await bulk_robots(settings, account.account_id, robots)
    engine = create_engine(settings, "bench", pool_size=1)
    try:

        async def work(session: Any) -> None:
            session.add(Queue(account_id=account.account_id, name=QUEUE, max_retries=0))

        await run_in_transaction(session_factory(engine), work)
    finally:
        await engine.dispose()
    return [key for _, key in made], account.account_id


class TaskRobot:
    """A robot on the real protocol that adds, takes and finishes tasks (no work in between)."""

    def __init__(self, url: str, key: str, index: int) -> None:
        self.url = url
        self.key = key
        self.index = index
        self.seq = 0
        self.replies: dict[uuid.UUID, asyncio.Future[dict[str, Any]]] = {}
        self.ws: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.beats: asyncio.Task[None] | None = None
        self.errors: list[str] = []

    async def connect(self) -> None:
        self.ws = await websockets.connect(
            self.url,
            additional_headers={"Authorization": f"Bearer {self.key}"},
            max_size=2**24,
            compression=None,
        )
        await self.ws.send(
            encode(
                Hello(
                    protocol=PROTOCOL_VERSION,
                    robot_version="bench-1.0",
                    machine=f"bench-{self.index}",
                    capabilities=["jobs", "tasks"],
                )
            )
        )
        welcome = json.loads(await self.ws.recv())
        if welcome.get("type") != "welcome":
            raise RuntimeError(f"robot {self.index}: expected welcome, got {welcome}")
        self.seq = int((welcome.get("resume") or {}).get("last_seq") or 0)
        self.reader = asyncio.create_task(self._read())
        self.beats = asyncio.create_task(self._heartbeats(float(welcome.get("heartbeat_interval_s") or 15)))

    async def _heartbeats(self, interval: float) -> None:
        """As a robot does: a heartbeat every ``heartbeat_interval_s`` from its welcome on."""
        beat = encode(Heartbeat())
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await asyncio.sleep(interval)
                await self.ws.send(beat)

    async def _read(self) -> None:
        async for raw in self.ws:
            frame = json.loads(raw)
            rid = frame.get("request_id")
            if rid is not None:
                fut = self.replies.pop(uuid.UUID(rid), None)
                if fut is not None and not fut.done():
                    fut.set_result(frame)
            elif frame.get("type") == "error":
                self.errors.append(f"{frame.get('code')}: {frame.get('detail')}")

    async def request(self, make: Any) -> dict[str, Any]:
        """Send the frame ``make(seq, request_id)`` and wait for the reply carrying its request id."""
        self.seq += 1
        rid = uuid.uuid4()
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[rid] = fut
        await self.ws.send(encode(make(self.seq, rid)))
        return await asyncio.wait_for(fut, 60)

    async def close(self) -> None:
        for task in (self.reader, self.beats):
            if task is not None:
                task.cancel()
        if self.ws is not None:
            await self.ws.close()

    async def work(self, plan: Plan, batch: int, side: Side, done: list[float]) -> None:
        while n := plan.claim(batch):
            items = [
                TaskItem(name=f"r{self.index}-{uuid.uuid4().hex[:12]}", parameters={"n": i}) for i in range(n)
            ]
            added = await self.request(
                lambda seq, rid, items=items: TaskAdd(seq=seq, request_id=rid, queue=QUEUE, tasks=items)
            )
            if added.get("error"):
                side.errors.append(f"task.add: {added['error']}")
                return
            for _ in range(n):
                t0 = time.perf_counter()
                taken = await self.request(lambda seq, rid: TaskTake(seq=seq, request_id=rid, queue=QUEUE))
                side.takes_ms.append((time.perf_counter() - t0) * 1000)
                task = taken.get("task")
                if taken.get("error"):
                    side.errors.append(f"task.take: {taken['error']}")
                    continue
                if task is None:
                    side.empty_takes += 1
                    continue
                finished = await self.request(
                    lambda seq, rid, task=task: TaskFinish(
                        seq=seq,
                        request_id=rid,
                        task_id=task["id"],
                        lock_token=task["lock_token"],
                        outcome="successful",
                        output={"ok": True},
                    )
                )
                if finished.get("error"):
                    side.errors.append(f"task.finish: {finished['error']}")
                    continue
                side.finished += 1
                done.append(time.perf_counter())


async def run_gateway_side(
    services: Services, db_url: str, nats_url: str, args: argparse.Namespace, tasks: int
) -> Side:
    side = Side()
    settings = bench_settings(db_url, nats_url)
    keys, _ = await seed_queue(settings, args.robots)
    port = free_port()
    env = service_env(
        db_url,
        nats_url,
        RPA_GATEWAY_PORT=str(port),
        **{
            "RPA_HEARTBEAT_INTERVAL_S": "15",
            **({"RPA_GATEWAY_WRITERS": str(args.writers)} if args.writers else {}),
            **dict(kv.split("=", 1) for kv in args.gateway_env),
        },
    )
    await start_service(services, "gateway", "rpa_gateway", env, port)
    pid = services.pid("gateway")
    url = f"ws://127.0.0.1:{port}/robot/v1"
    robots = [TaskRobot(url, key, i) for i, key in enumerate(keys)]
    profiler: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.gather(*(r.connect() for r in robots))
        # Warm-up, not measured: each robot one small round.
        warm = Side()
        await asyncio.gather(*(r.work(Plan(2, time.perf_counter() + 30), 2, warm, []) for r in robots))
        if warm.errors or warm.finished != 2 * len(robots):
            raise RuntimeError(f"warm-up failed: {warm.finished} finished, errors {warm.errors[:3]}")
        if args.profile:
            profiler = start_profiler(services, pid)
        plan = Plan(tasks, time.perf_counter() + args.seconds)
        done: list[float] = []
        cpu0, own0 = cpu_seconds(pid), cpu_seconds(os.getpid())
        start = time.perf_counter()
        await asyncio.gather(*(r.work(plan, args.add_batch, side, done) for r in robots))
        side.cpu_s = cpu_seconds(pid) - cpu0
        side.client_cpu_s = cpu_seconds(os.getpid()) - own0
        side.elapsed_s = (max(done) if done else time.perf_counter()) - start
        for r in robots:
            side.errors += r.errors
    finally:
        if profiler is not None:
            stop_profiler(profiler)
        await asyncio.gather(*(r.close() for r in robots), return_exceptions=True)
        services.stop("gateway")
    profile = services.log_dir / "gateway-profile.txt"
    if profiler is not None and profile.exists():
        print_table(f"Gateway CPU profile (py-spy, {profile})", profile_summary(profile))
    return side


def start_profiler(services: Services, pid: int) -> subprocess.Popen[bytes] | None:
    """``py-spy record`` on the gateway, collapsed stacks (``--format raw``) into the log folder."""
    spy = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if not spy or not Path(spy).exists():
        print("--profile: py-spy not found (PATH or PY_SPY); profiling skipped", file=sys.stderr)
        return None
    out = services.log_dir / "gateway-profile.txt"
    print(f"profiling the gateway into {out}", file=sys.stderr)
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--format", "raw", "--output", str(out), "--rate", "200"],
        stdout=subprocess.DEVNULL,
        stderr=open(services.log_dir / "py-spy.log", "wb"),
    )


def stop_profiler(proc: subprocess.Popen[bytes]) -> None:
    import signal

    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def profile_summary(path: Path, top: int = 25) -> list[tuple[str, Any]]:
    """Where the gateway's CPU went: functions by share of py-spy's samples (which leave out idle
    time, the event loop waiting), inclusive (``incl``: in the function or below) and ``self``."""
    inclusive: dict[str, int] = {}
    leaf: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + n
    if not total:
        return []
    rows: list[tuple[str, Any]] = [("profile samples", total)]
    interesting = sorted(
        ((f, n) for f, n in inclusive.items() if "rpa_" in f or "sqlalchemy" in f or "asyncpg" in f),
        key=lambda x: -x[1],
    )
    rows += [(f"incl {f[:90]}", f"{100 * n / total:.1f}%") for f, n in interesting[:top]]
    rows += [
        (f"self {f[:90]}", f"{100 * n / total:.1f}%")
        for f, n in sorted(leaf.items(), key=lambda x: -x[1])[:top]
    ]
    return rows


# The anchor: PgQueuer ----------------------------------------------------------------------------


async def run_anchor(services: Services, db_url: str, args: argparse.Namespace, tasks: int) -> Side:
    import asyncpg
    from pgqueuer import AsyncpgDriver, AsyncpgPoolDriver, Queries

    side = Side()
    dsn = db_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()
    worker = peer(
        services,
        "pgq-worker",
        "pgq-worker",
        env={"BENCH_PGQ_DSN": dsn, "BENCH_PGQ_BATCH": str(args.pgq_batch)},
        stdout=subprocess.PIPE,
    )
    assert worker.stdout is not None
    line = await asyncio.to_thread(worker.stdout.readline)
    if line.strip() != b"ready":
        raise RuntimeError(f"PgQueuer worker did not start: {line!r}")
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=max(2, min(args.robots, 20)))
    watch = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgPoolDriver(pool))
    enqueued = 0
    left = 0  # rows still in the queue table, as last counted
    backlog = args.robots * args.add_batch
    moved = asyncio.Event()

    snap = 0  # ``enqueued`` when the last count started

    def outstanding() -> int:
        """Jobs enqueued and not yet finished: the last count plus what was enqueued since."""
        return left + (enqueued - snap)

    async def count() -> None:
        nonlocal left, snap
        while True:
            started = enqueued
            left = int(await watch.fetchval("SELECT count(*) FROM pgqueuer"))
            snap = started
            moved.set()
            await asyncio.sleep(0.005)

    async def producer(plan: Plan, index: int) -> None:
        nonlocal enqueued
        while True:
            while outstanding() > backlog - args.add_batch:
                moved.clear()
                await moved.wait()
            n = plan.claim(args.add_batch)
            if not n:
                return
            payloads: list[bytes | None] = [json.dumps({"n": i, "robot": index}).encode() for i in range(n)]
            try:
                await queries.enqueue(["lifecycle"] * n, payloads, [0] * n)
            except Exception as exc:
                side.errors.append(f"enqueue: {exc!r}")
                return
            enqueued += n

    async def run_phase(total: int, seconds: float) -> tuple[int, float]:
        plan = Plan(total, time.perf_counter() + seconds)
        start = time.perf_counter()
        await asyncio.gather(*(producer(plan, i) for i in range(args.robots)))
        # Every enqueued job must leave the table (its finish logged).
        deadline = time.monotonic() + 60
        while outstanding() > 0 and time.monotonic() < deadline:
            moved.clear()
            await moved.wait()
        return enqueued, time.perf_counter() - start

    counter = asyncio.create_task(count())
    try:
        await run_phase(2 * args.robots, 30)  # warm-up, not measured
        if outstanding():
            raise RuntimeError("PgQueuer warm-up did not drain")
        enqueued = snap = 0
        cpu0 = cpu_seconds(worker.pid)
        made, elapsed = await run_phase(tasks, args.seconds)
        side.cpu_s = cpu_seconds(worker.pid) - cpu0
        side.finished = made - outstanding()
        side.elapsed_s = elapsed
        if outstanding():
            side.errors.append(f"{outstanding()} jobs still queued 60 s after the last enqueue")
    finally:
        counter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await counter
        await watch.close()
        await pool.close()
        services.stop("pgq-worker")
    return side


# The benchmark -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def environment(services: Services) -> AsyncIterator[tuple[str, str]]:
    nats_url = await start_nats(services)
    async with fresh_database("tasks") as db_url:
        if not db_url.startswith(("postgresql", "postgres")):
            raise SystemExit("bench/tasks.py needs PostgreSQL (RPA_DB_URL): the PgQueuer anchor runs on it")
        yield db_url, nats_url


async def run(args: argparse.Namespace) -> dict[str, Any]:
    services = Services()
    try:
        async with environment(services) as (db_url, nats_url):
            gateway = (
                await run_gateway_side(services, db_url, nats_url, args, args.tasks)
                if not args.anchor_only
                else Side()
            )
            anchor = await run_anchor(services, db_url, args, args.tasks) if not args.gateway_only else Side()
    finally:
        services.stop()
    return report(args, gateway, anchor, services)


def report(args: argparse.Namespace, gateway: Side, anchor: Side, services: Services) -> dict[str, Any]:
    takes = gateway.takes_ms
    ratio = round(gateway.per_s / anchor.per_s, 3) if anchor.per_s else float("nan")
    out = {
        "lifecycles_per_s": gateway.per_s,
        "anchor_lifecycles_per_s": anchor.per_s,
        "ratio": ratio,
        "take_p99_ms": round(percentile(takes, 99), 2),
        "take_p50_ms": round(percentile(takes, 50), 2),
        "gateway_cpu_ms_per_lifecycle": gateway.cpu_ms_per_lifecycle,
        "anchor_cpu_ms_per_lifecycle": anchor.cpu_ms_per_lifecycle,
        "robots": args.robots,
        "add_batch": args.add_batch,
        "gateway_writers": args.writers,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    rows: list[tuple[str, Any]] = [
        ("gateway: lifecycles finished", gateway.finished),
        ("gateway: elapsed (s)", round(gateway.elapsed_s, 2)),
        ("gateway: lifecycles/s", gateway.per_s),
        ("gateway: take p50 (ms)", out["take_p50_ms"]),
        ("gateway: take p95 (ms)", round(percentile(takes, 95), 2)),
        ("gateway: take p99 (ms)", out["take_p99_ms"]),
        ("gateway: take max (ms)", round(max(takes), 2) if takes else float("nan")),
        ("gateway: empty takes", gateway.empty_takes),
        ("gateway: errors", len(gateway.errors)),
        ("gateway: CPU per lifecycle (ms)", gateway.cpu_ms_per_lifecycle),
        ("gateway: CPU (% of one core)", gateway.cpu_pct),
        (
            "simulated robots: CPU (% of one core)",
            round(gateway.client_cpu_s * 100 / gateway.elapsed_s, 1) if gateway.finished else float("nan"),
        ),
        ("anchor (PgQueuer): lifecycles finished", anchor.finished),
        ("anchor (PgQueuer): elapsed (s)", round(anchor.elapsed_s, 2)),
        ("anchor (PgQueuer): lifecycles/s", anchor.per_s),
        ("anchor (PgQueuer): worker CPU per lifecycle (ms)", anchor.cpu_ms_per_lifecycle),
        ("anchor (PgQueuer): worker CPU (% of one core)", anchor.cpu_pct),
        ("anchor (PgQueuer): errors", len(anchor.errors)),
        ("ratio gateway / anchor (lifecycles/s)", f"{ratio:.2f}x" if ratio == ratio else "n/a"),
    ]
    print_table(
        f"Task lifecycles (add, take, finish): {args.robots} robots, add batch {args.add_batch},"
        f" up to {args.tasks} tasks or {args.seconds:g} s",
        rows,
    )
    print(f"goal: >= 1,000 lifecycles/s, take p99 <= 20 ms; service logs in {services.log_dir}")
    for name, side in (("gateway", gateway), ("anchor", anchor)):
        for err in side.errors[:3]:
            print(f"{name} error: {err}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--robots", type=int, default=20, help="simulated robots (and PgQueuer producers)")
    parser.add_argument("--tasks", type=int, default=20000, help="lifecycles to run on each side (at most)")
    parser.add_argument("--seconds", type=float, default=30.0, help="stop starting lifecycles after this")
    parser.add_argument("--add-batch", type=int, default=10, help="tasks per task.add (and per enqueue)")
    parser.add_argument("--pgq-batch", type=int, default=10, help="PgQueuer worker's dequeue batch size")
    parser.add_argument(
        "--writers", type=int, default=None, help="the gateway's RPA_GATEWAY_WRITERS (default: its own)"
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="RPA_X=VALUE",
        help="a setting of the gateway process (repeatable), e.g. RPA_GATEWAY_BATCH_DELAY_MS=0",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy record the gateway during the run")
    parser.add_argument("--anchor-only", action="store_true", help="run only the PgQueuer anchor")
    parser.add_argument("--gateway-only", action="store_true", help="run only the gateway side")
    parser.add_argument("--json", type=str, default=None, help="also write the summary as JSON here")
    args = parser.parse_args()
    ensure_pgqueuer()
    # uvloop, as the services run: the simulated robots share the machine's two cores with them.
    result = uvloop.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
