"""Benchmark: job dispatch latency, from the API accepting a job to a robot receiving ``job.start``.

Runs on its own::

    .venv/bin/python bench/dispatch.py [--robots N] [--rate R] [--seconds S] [--json PATH]

It starts everything it needs: a private NATS server (other processes on a shared NATS would take
the scheduler's wake-ups), a fresh database on the local PostgreSQL (or ``RPA_DB_URL``'s server)
built from the migrations, and the API, the scheduler and the robot gateway as real processes.
Then N simulated robots connect over the real WebSocket protocol (hello, heartbeats, job.start ->
job.status running -> successful), and jobs for a group holding all robots are created through the
API at a fixed rate. Latency = time the robot received ``job.start`` - time the API's 201 response
was received (both on this process's monotonic clock). A robot may receive the job before the
HTTP response has reached the client; such jobs count as 0 ms (and are counted).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import sqlalchemy as sa  # noqa: E402
import websockets  # noqa: E402

from rpa_common.db.admin import create_database, drop_database  # noqa: E402
from rpa_common.db.engine import create_engine, session_factory  # noqa: E402
from rpa_common.db.uow import run_in_transaction  # noqa: E402
from rpa_common.models import (  # noqa: E402
    Process,
    ProcessVersion,
    Robot,
    RobotGroup,
    RobotGroupMember,
    User,
)
from rpa_common.models.enums import RobotRole  # noqa: E402
from rpa_common.security import issue_access_token, make_key  # noqa: E402
from rpa_common.settings import Settings  # noqa: E402

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SECRET = "bench-secret-" + uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# Infrastructure ----------------------------------------------------------------------------------


@dataclass
class Services:
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rpa-bench-")))

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((name, proc))
        return proc

    def stop(self) -> None:
        # The services first (they drain to NATS on the way out), NATS last.
        services = [(n, p) for n, p in self.procs if n != "nats"]
        nats = [(n, p) for n, p in self.procs if n == "nats"]
        for group in (services, nats):
            for _, proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for name, proc in group:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    print(f"{name} did not stop in time; killing it", file=sys.stderr)
                    proc.kill()


def cpu_seconds(services: Services) -> dict[str, float]:
    """User + system CPU seconds used so far by each service process and by this one."""
    import psutil

    out = {}
    for name, proc in [*services.procs, ("bench (robots + client)", None)]:
        try:
            times = psutil.Process(proc.pid if proc else os.getpid()).cpu_times()
        except psutil.Error:
            continue
        out[name] = times.user + times.system
    return out


async def wait_ready(url: str, proc: subprocess.Popen[bytes], name: str, within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url, timeout=2)).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{name} not ready at {url} in {within_s}s")


async def wait_port(port: int, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def migrate(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


@dataclass
class Seed:
    token: str
    process_id: uuid.UUID
    group_id: uuid.UUID
    robot_keys: list[str]


async def seed(settings: Settings, robots: int) -> Seed:
    from rpa_api.bootstrap import bootstrap

    engine = create_engine(settings, "bench", pool_size=2)
    sessions = session_factory(engine)
    try:
        account, _ = await run_in_transaction(
            sessions, lambda s: bootstrap(s, "bench", "bench-admin", "bench password 1234")
        )
        process_id, version_id, group_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        keys = [make_key("rbk") for _ in range(robots)]

        async def work(session: Any) -> uuid.UUID:
            admin = (
                await session.execute(sa.select(User).where(User.username == "bench-admin"))
            ).scalar_one()
            session.add(Process(id=process_id, account_id=account.id, name="bench-noop"))
            await session.flush()
            session.add(
                ProcessVersion(
                    id=version_id,
                    account_id=account.id,
                    process_id=process_id,
                    version="1.0.0",
                    entry_point="main.py",
                    sha256="0" * 64,
                    size=1,
                )
            )
            await session.flush()
            await session.execute(
                sa.update(Process).where(Process.id == process_id).values(current_version_id=version_id)
            )
            session.add(RobotGroup(id=group_id, account_id=account.id, name="bench-robots"))
            await session.flush()
            for i, key in enumerate(keys):
                rid = uuid.uuid4()
                session.add(
                    Robot(
                        id=rid,
                        account_id=account.id,
                        name=f"bench-{i:04d}",
                        role=RobotRole.UNATTENDED,
                        key_prefix=key.prefix,
                        key_hash=key.hash,
                    )
                )
                await session.flush()
                session.add(RobotGroupMember(group_id=group_id, robot_id=rid))
            return admin.id

        admin_id = await run_in_transaction(sessions, work)
    finally:
        await engine.dispose()
    token = issue_access_token(settings, user_id=admin_id, account_id=account.id, token_version=0)
    return Seed(token, process_id, group_id, [k.full for k in keys])


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
            json.dumps(
                {
                    "type": "hello",
                    "seq": 0,
                    "protocol": 1,
                    "robot_version": "bench-1.0",
                    "machine": f"bench-{index}",
                    "capabilities": ["jobs"],
                    "attended": False,
                }
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
                await ws.send(json.dumps({"type": "heartbeat", "seq": 0}))

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
                            json.dumps(
                                {
                                    "type": "job.status",
                                    "seq": seq,
                                    "job_id": job_id,
                                    "attempt": frame["attempt"],
                                    "status": status,
                                    **({"output": {}} if status == "successful" else {}),
                                }
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
async def environment(args: argparse.Namespace) -> AsyncIterator[tuple[Settings, dict[str, str], Services]]:
    services = Services()
    nats_port = free_port()
    services.start(
        "nats",
        [str(ROOT / ".venv/bin/nats-server"), "-a", "127.0.0.1", "-p", str(nats_port)],
        dict(os.environ),
    )
    admin_url = os.environ.get("RPA_DB_URL") or DEFAULT_ADMIN_URL
    db_name = f"rpa_bench_{os.getpid()}"
    await create_database(admin_url, db_name)
    db_url = _with_db(admin_url, db_name)
    try:
        await wait_port(nats_port)
        await asyncio.to_thread(migrate, db_url)
        ports = {"api": free_port(), "gateway": free_port(), "scheduler": free_port()}
        env = {k: v for k, v in os.environ.items() if not k.startswith("RPA_")}
        env.update(
            RPA_DB_URL=db_url,
            RPA_NATS_URL=f"nats://127.0.0.1:{nats_port}",
            RPA_SECRET_KEY=SECRET,
            RPA_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            RPA_API_PORT=str(ports["api"]),
            RPA_GATEWAY_PORT=str(ports["gateway"]),
            RPA_SCHEDULER_PORT=str(ports["scheduler"]),
            RPA_HEARTBEAT_INTERVAL_S="15",
        )
        settings = Settings(db_url=db_url, secret_key=SECRET, nats_url=env["RPA_NATS_URL"])
        procs = {
            name: services.start(name, [sys.executable, "-m", module, "serve"], env)
            for name, module in (
                ("api", "rpa_api"),
                ("scheduler", "rpa_scheduler"),
                ("gateway", "rpa_gateway"),
            )
        }
        for name, proc in procs.items():
            await wait_ready(f"http://127.0.0.1:{ports[name]}/readyz", proc, name)
        urls = {
            "api": f"http://127.0.0.1:{ports['api']}",
            "gateway": f"ws://127.0.0.1:{ports['gateway']}/robot/v1",
        }
        yield settings, urls, services
    finally:
        services.stop()
        await drop_database(admin_url, db_name)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with environment(args) as (settings, urls, services):
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
            cpu_before = cpu_seconds(services)
            elapsed = await create_jobs(urls["api"], s, args.rate, args.seconds, results)
            # Wait for the last offers to arrive.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and set(results.accepted) - set(results.received):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # the last jobs' completion
            cpu_after = cpu_seconds(services)
        finally:
            for task in robots:
                task.cancel()
            await asyncio.gather(*robots, return_exceptions=True)
            crashed = [t for t in robots if t.done() and not t.cancelled() and t.exception()]
        for t in crashed[:3]:
            print(f"robot failed: {t.exception()!r}", file=sys.stderr)
        server = await server_side(settings, list(results.accepted))
        latencies = [
            (results.received[j] - t) * 1000 for j, t in results.accepted.items() if j in results.received
        ]
        early = sum(1 for v in latencies if v < 0)
        latencies = [max(0.0, v) for v in latencies]
        missing = len(results.accepted) - len(latencies)
        report = {
            "p50_ms": round(percentile(latencies, 50), 2),
            "p95_ms": round(percentile(latencies, 95), 2),
            "p99_ms": round(percentile(latencies, 99), 2),
            "jobs_per_s": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
            "robots": args.robots,
        }
        print()
        print(
            f"Dispatch benchmark: {args.robots} robots, {args.rate:g} jobs/s offered for {args.seconds:g} s"
        )
        print(f"{'metric':<34}{'value':>12}")
        print("-" * 46)
        rows = [
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
        ]
        for name in cpu_after:
            used = (cpu_after[name] - cpu_before.get(name, 0.0)) * 1000 / max(1, len(latencies))
            rows.append((f"CPU per job: {name} (ms)", round(used, 2)))
        for name, value in rows:
            print(f"{name:<34}{value!s:>12}")
        print(f"goal: p50 <= 10 ms, p99 <= 50 ms at 100 jobs/s; service logs in {services.log_dir}")
        if results.robot_errors:
            print(f"robot saw {len(results.robot_errors)} error frames, e.g. {results.robot_errors[0]}")
        return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--robots", type=int, default=20, help="simulated robots (one group)")
    parser.add_argument("--rate", type=float, default=100.0, help="jobs created per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long jobs are created")
    parser.add_argument("--json", type=str, default=None, help="also write the summary as JSON here")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
