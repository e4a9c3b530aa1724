"""``make failover-test``: the failover layout on loopback, load, faults one after another, and the proof.

    .venv/bin/python -m tests.failover [--db mariadb|postgresql] [--json PATH] [--rate 2] [--robots 4]

Builds the layout of ``tests/failover/layout.py`` (two database nodes behind the database balancer,
a three-node NATS cluster, two replicas of API, gateway and scheduler behind HAProxy, real reference
robots connected through HAProxy), runs load (jobs created through the API with ``Idempotency-Key``,
run by the robots, whose scripts log lines; queue tasks added through the API and taken and
finished by queue worker jobs on the robots), and while the load runs injects, one after
another: SIGKILL of the database node taking writes; its restart (failback); SIGKILL of the gateway
replica holding the most robots; SIGKILL of the scheduler replica doing the most work; a restart
of one NATS node; a restart of all of NATS.

It passes when every acknowledged job, task and log line exists afterwards; no task was taken by
two robots at once; every job reached exactly one terminal state and ran once; no client saw a 5xx
other than a 503 with ``Retry-After``; after each fault the services wrote again within 2 s of
the database layer itself (a bare writer loop against the balancer's database port, in the same
run); and never did two database nodes take writes (Galera: the binary log of the node that lived
through the run lists every transaction in the cluster's commit order with the node it came
from: the writer changes exactly once per fail-over and once per failback; Patroni: see
``tests/failover/patroni.py``). It prints a table and writes ``--json PATH`` (or ``$FAILOVER_JSON``). Exit code 0 when every criterion holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.failover import layout
from tests.failover.layout import ROOT, Proc, say, wait_for

API = "/api/v1"


FINAL = ("Successful", "Failed", "Stopped", "Interrupted")
LOG_LINES = 3
MAX_OVER_DB_S = 2.0


# Load --------------------------------------------------------------------------------------------


@dataclass
class Attempt:
    start: float
    end: float
    status: int | None  # None: no HTTP answer (connection refused, reset, timeout)
    retry_after: bool = False


@dataclass
class Created:
    key: str
    ids_file: Path  # hello: the ids of its log lines; task worker: its records
    kind: str = "hello"  # or "worker" (takes queue tasks)
    job_id: str | None = None
    acked_at: float | None = None
    attempts: list[Attempt] = field(default_factory=list)
    replies: set[str] = field(default_factory=set)  # job ids answered for this key (must be one)


@dataclass
class AddedTask:
    name: str
    task_id: str | None = None
    acked_at: float | None = None
    attempts: list[Attempt] = field(default_factory=list)
    found: bool = False


@dataclass
class Queue:
    """The queue of the task load and the process that works it."""

    queue_id: str
    name: str
    worker_process_id: str


class Load:
    """Jobs created through the API at ``rate`` per second, each retried with its own
    ``Idempotency-Key`` until acknowledged; every other one a queue worker when there is a queue,
    and tasks added to that queue at half the rate (names unique in the queue: a retry of an add
    whose answer was lost is refused 409, which acknowledges it); a bare database writer against
    the balancer."""

    def __init__(
        self,
        api_url: str,
        token: str,
        process_id: str,
        group_id: str,
        ids_dir: Path,
        rate: float,
        queue: Queue,
    ) -> None:
        self.client = httpx.AsyncClient(
            base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=20
        )
        self.process_id = process_id
        self.group_id = group_id
        self.ids_dir = ids_dir
        self.rate = rate
        self.queue = queue
        self.added: list[AddedTask] = []
        self.jobs: list[Created] = []
        self.unexpected: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.db_beats: list[tuple[float, float, bool]] = []
        self._db_stop = threading.Event()

    async def _create(self, job: Created) -> None:
        if job.kind == "worker":
            body: dict[str, Any] = {
                "process_id": self.queue.worker_process_id,
                "robot_group_id": self.group_id,
                "input_args": {"queue": self.queue.name, "records": str(job.ids_file), "max_tasks": 3},
            }
        else:
            body = {
                "process_id": self.process_id,
                "robot_group_id": self.group_id,
                "input_args": {"count": LOG_LINES, "delay_s": 0.05, "ids_file": str(job.ids_file)},
            }
        deadline = time.monotonic() + 90
        delay = 0.2
        while time.monotonic() < deadline:
            t = time.time()
            try:
                r = await self.client.post(f"{API}/jobs", json=body, headers={"Idempotency-Key": job.key})
            except httpx.HTTPError:
                job.attempts.append(Attempt(t, time.time(), None))
            else:
                job.attempts.append(Attempt(t, time.time(), r.status_code, "retry-after" in r.headers))
                if r.status_code in (200, 201):
                    job.replies.add(r.json()["id"])
                    job.job_id = r.json()["id"]
                    job.acked_at = time.time()
                    return
                if r.status_code < 500:
                    self.unexpected.append(f"POST /jobs {r.status_code}: {r.text[:300]}")
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def job(self, kind: str) -> None:
        key = uuid.uuid4().hex
        job = Created(key, self.ids_dir / f"{key}.txt", kind)
        self.jobs.append(job)
        self.spawn(self._create(job))

    async def run_jobs(self) -> None:
        period = 1 / self.rate
        next_at = time.monotonic()
        n = 0
        while not self._stop.is_set():
            self.job("worker" if n % 2 else "hello")
            if n % 2 == 0:
                self.spawn(self._add_task(AddedTask(f"task-{uuid.uuid4().hex}")))
            n += 1
            next_at += period
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, next_at - time.monotonic()))

    async def _add_task(self, task: AddedTask) -> None:
        self.added.append(task)
        body = {"name": task.name, "parameters": {"amount": 1}}
        deadline = time.monotonic() + 90
        delay = 0.2
        while time.monotonic() < deadline:
            t = time.time()
            try:
                r = await self.client.post(f"{API}/queues/{self.queue.queue_id}/tasks", json=body)
            except httpx.HTTPError:
                task.attempts.append(Attempt(t, time.time(), None))
            else:
                task.attempts.append(Attempt(t, time.time(), r.status_code, "retry-after" in r.headers))
                if r.status_code == 201 or (r.status_code == 409 and len(task.attempts) > 1):
                    # 409 on a retry: the name is taken, by this very task (an add whose answer was lost).
                    task.task_id = r.json()["id"] if r.status_code == 201 else None
                    task.acked_at = time.time()
                    return
                if r.status_code < 500:
                    self.unexpected.append(f"POST tasks {r.status_code}: {r.text[:300]}")
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def acked_tasks(self) -> list[AddedTask]:
        return [t for t in self.added if t.acked_at is not None]

    def run_db_probe(self, port: int, password: str) -> None:
        """The database layer's own recovery: a tiny writer straight through the balancer."""
        import pymysql

        conn = None
        while not self._db_stop.is_set():
            t = time.time()
            try:
                if conn is None:
                    conn = pymysql.connect(
                        host="127.0.0.1",
                        port=port,
                        user="rpa_probe",
                        password=password,
                        connect_timeout=1,
                        read_timeout=2,
                        write_timeout=2,
                        autocommit=True,
                    )
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO rpa_probe.beat (at) VALUES (%s)", (t,))
                self.db_beats.append((t, time.time(), True))
            except pymysql.MySQLError:
                self.db_beats.append((t, time.time(), False))
                with contextlib.suppress(Exception):
                    if conn is not None:
                        conn.close()
                conn = None
            time.sleep(0.05)
        if conn is not None:
            conn.close()

    async def stop(self) -> None:
        """No new jobs or tasks; the bare writer stops; what is being created is waited for."""
        self._stop.set()
        self._db_stop.set()
        await self.settle()

    async def settle(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        await self.client.aclose()

    def acked(self) -> list[Created]:
        return [j for j in self.jobs if j.job_id is not None]


def outage(t0: float, t1: float, done: list[float]) -> float:
    """The longest time within [t0, t1] without a completed write, counted from t0 and up to t1
    (a write that never came back before the window's end counts as an outage to its end)."""
    points = [t0, *sorted(c for c in done if t0 < c < t1), t1]
    return max(b - a for a, b in itertools.pairwise(points))


# Faults ------------------------------------------------------------------------------------------


@dataclass
class Fault:
    name: str
    t0: float
    t1: float = 0.0
    db_s: float = 0.0
    service_s: float = 0.0
    signals: dict[str, float] = field(default_factory=dict)
    acknowledged: int = 0
    found: int = 0
    doubled: int = 0
    http_5xx: int = 0
    http_503_retry_after: int = 0
    note: str = ""


class Monitor(threading.Thread):
    """Samples the balancers' stats pages every 0.2 s: which database node is UP, how many robot
    tunnels each gateway replica holds."""

    def __init__(self, db_stats: int | None, edge_stats: int) -> None:
        super().__init__(daemon=True)
        self.db_stats, self.edge_stats = db_stats, edge_stats
        self.samples: list[tuple[float, dict[str, str]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            row: dict[str, str] = {}
            with contextlib.suppress(Exception):
                for (_px, sv), r in layout.stats(self.edge_stats).items():
                    if sv in ("gw1", "gw2", "api1", "api2"):
                        row[sv] = f"{r['status']}/{r['scur']}"
            if self.db_stats is not None:
                with contextlib.suppress(Exception):
                    for (px, sv), r in layout.stats(self.db_stats).items():
                        if sv not in ("FRONTEND", "BACKEND") and px != "stats":
                            row[sv] = r["status"]
            self.samples.append((time.time(), row))
            self.stop.wait(0.2)


# The run -----------------------------------------------------------------------------------------


def example_zip(folder: Path) -> bytes:
    """A process package: the folder's files at the zip's root."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix in (".py", ".json"):
                zf.write(path, path.name)
    return buf.getvalue()


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="rpa-failover-"))
        self.secrets = layout.Secrets()
        self.procs: list[Proc] = []
        self.galera: layout.Galera | None = None
        self.patroni: Any = None
        self.nats: layout.NatsCluster | None = None
        self.edge: layout.Edge | None = None
        self.robots: list[Proc] = []
        self.robot_ids: list[str] = []
        self.faults: list[Fault] = []
        self.failures: list[str] = []
        self.token = ""
        self.queue: Queue | None = None

    # -- building ---------------------------------------------------------------------------------

    def db_env(self) -> dict[str, str]:
        if self.galera is not None:
            return {
                "RPA_DB_DRIVER": "mariadb",
                "RPA_DB_HOST": "127.0.0.1",
                "RPA_DB_PORT": str(self.galera.proxy_port),
            }
        return {
            "RPA_DB_DRIVER": "postgresql",
            "RPA_DB_HOST": "127.0.0.1",
            "RPA_DB_PORT": str(self.patroni.proxy_port),
        }

    def service_env(self) -> dict[str, str]:
        assert self.nats is not None
        key = base64.b64encode(os.urandom(32)).decode()
        return {
            **layout._base_env(),
            **self.db_env(),
            "RPA_DB_USER": "rpa",
            "RPA_DB_PASSWORD": self.secrets.db_password,
            "RPA_DB_NAME": "rpa",
            "RPA_DB_POOL_SIZE": "5",
            "RPA_NATS_URL": self.nats.url,
            "RPA_ENVIRONMENT": "production",
            "RPA_SECRET_KEY": self.secrets.secret_key,
            "RPA_ENCRYPTION_KEYS": f"k1:{key}",
            "RPA_CREDENTIALS_MASTER_KEYS": f"m1:{base64.b64encode(os.urandom(32)).decode()}",
            "RPA_LOG_JSON": "true",
            "RPA_API_WORKERS": "1",
            "RPA_ACCESS_TOKEN_TTL_S": "3600",
            # The recovery sweep finds work a dead replica or a lost message left: every second here.
            "RPA_SWEEP_INTERVAL_S": "1",
        }

    def one_shot(self, name: str, argv: list[str], env: dict[str, str], timeout: float = 300) -> None:
        log = self.work / f"{name}.log"
        with open(log, "wb") as out:
            result = subprocess.run(
                argv, cwd=ROOT, env=env, stdout=out, stderr=out, timeout=timeout, check=False
            )
        if result.returncode != 0:
            raise RuntimeError(
                f"{name} failed ({result.returncode}):\n{log.read_text(errors='replace')[-3000:]}"
            )

    def build(self) -> None:
        t0 = time.monotonic()
        if self.args.db == "mariadb":
            layout.ensure_packages(layout.MARIADB_PACKAGES, layout.MARIADB_PROGRAMS)
            self.galera = layout.Galera(self.work, self.secrets)
            try:
                self.galera.build()
            finally:
                self.procs += self.galera.processes()
            admin = {"RPA_DB_ADMIN_USER": "rpa_admin", "RPA_DB_ADMIN_PASSWORD": self.secrets.admin_password}
        else:
            from tests.failover import patroni

            layout.ensure_packages(layout.PG_PACKAGES, layout.PG_PROGRAMS)
            self.patroni = patroni.Patroni(self.work, self.secrets)
            try:
                self.patroni.build()
            finally:
                self.procs += self.patroni.processes()
            admin = {"RPA_DB_ADMIN_USER": "postgres", "RPA_DB_ADMIN_PASSWORD": self.secrets.admin_password}
        self.nats = layout.NatsCluster(self.work)
        self.nats.with_monitoring()
        self.procs += self.nats.procs
        self.nats.start()
        env = self.service_env()
        # The deployment's own database account, through the balancer (rpa_common.dbsetup), then
        # the schema and the first account with the services' own settings.
        self.one_shot(
            "dbsetup",
            [layout.PYTHON, "-m", "rpa_common.dbsetup", "--wait", "60"],
            {**env, **admin, "RPA_DBCHECK_PASSWORD": self.secrets.check_password},
        )
        self.one_shot("migrate", [layout.PYTHON, "-m", "alembic", "upgrade", "head"], env)
        self.one_shot(
            "bootstrap",
            [layout.PYTHON, "-m", "rpa_api", "bootstrap"],
            {**env, "RPA_ADMIN_PASSWORD": self.secrets.api_admin_password},
        )
        wait_for(self.nats.routed, 30, "the NATS cluster routes")
        self.edge = layout.Edge(self.work, env)
        self.procs += self.edge.processes()
        self.edge.start()
        say(f"layout up in {time.monotonic() - t0:.1f} s (work directory {self.work})")

    async def people(self, client: httpx.AsyncClient) -> tuple[str, str]:
        """Through the API as a person would: log in, publish the example, robots and their group."""
        r = await client.post(
            f"{API}/auth/token", data={"username": "admin", "password": self.secrets.api_admin_password}
        )
        assert r.status_code == 200, r.text
        self.token = r.json()["access_token"]
        client.headers["Authorization"] = f"Bearer {self.token}"
        r = await client.post(
            f"{API}/processes/publish",
            files={"package": ("hello.zip", example_zip(ROOT / "examples" / "hello"), "application/zip")},
        )
        assert r.status_code == 201, r.text
        process_id = r.json()["process"]["id"]
        r = await client.post(
            f"{API}/processes/publish",
            files={
                "package": (
                    "worker.zip",
                    example_zip(Path(__file__).parent / "task_worker"),
                    "application/zip",
                )
            },
        )
        assert r.status_code == 201, r.text
        worker_id = r.json()["process"]["id"]
        r = await client.post(f"{API}/queues", json={"name": "failover", "unique_task_names": True})
        assert r.status_code == 201, r.text
        self.queue = Queue(r.json()["id"], "failover", worker_id)
        assert self.edge is not None
        keys = []
        for i in range(self.args.robots):
            r = await client.post(f"{API}/robots", json={"name": f"failover-{i}", "role": "unattended"})
            assert r.status_code == 201, r.text
            self.robot_ids.append(r.json()["id"])
            keys.append(r.json()["key"])
        r = await client.post(f"{API}/robot-groups", json={"name": "failover", "robot_ids": self.robot_ids})
        assert r.status_code == 201, r.text
        group_id = r.json()["id"]
        for i, key in enumerate(keys):
            home = self.work / "robots" / f"robot-{i}"
            home.mkdir(parents=True)
            argv = [
                layout.PYTHON, "-m", "rpa_robot", "run", "--gateway", self.edge.ws_url, "--unattended",
                "--state-dir", str(home / "state"), "--cache-dir", str(home / "cache"),
            ]  # fmt: skip
            proc = Proc(f"robot-{i}", argv, {**layout._base_env(), "RPA_ROBOT_KEY": key}, home / "robot.log")
            proc.start()
            self.robots.append(proc)
            self.procs.append(proc)

        async def all_ready() -> bool:
            statuses = await self.robot_statuses(client)
            return all(s in ("Ready", "Working") for s in statuses.values())

        await self.until(all_ready, 60, "every robot connected")
        return process_id, group_id

    async def robot_statuses(self, client: httpx.AsyncClient) -> dict[str, str]:
        r = await client.get(f"{API}/robots", params={"limit": 200})
        return {item["id"]: item["status"] for item in r.json()["items"] if item["id"] in self.robot_ids}

    @staticmethod
    async def until(check: Callable[[], Any], timeout: float, what: str) -> float:
        """Poll ``check`` (sync or async) until truthy; the time it became so."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):
                # A plain function may block (HTTP, SQL): in a thread, so the load keeps running.
                value = check() if asyncio.iscoroutinefunction(check) else await asyncio.to_thread(check)
                if asyncio.iscoroutine(value):
                    value = await value
                if value:
                    return time.time()
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.1)

    # -- faults -------------------------------------------------------------------------------------

    async def faults_mariadb(self, load: Load, settle: float) -> None:
        g = self.galera
        assert g is not None
        db1 = g.nodes[0]

        self.begin("SIGKILL database writer (db1)")
        g.kill(db1)  # here, not in a thread: no write may slip in between the fault's start and the kill
        down_at = await self.until(lambda: g.writers().get("db1") != "UP", 30, "the balancer marks db1 down")
        await self.until(lambda: self.db_written_since(load, down_at), 60, "the database is written again")
        await asyncio.sleep(settle)

        fault = self.begin("restart db1 (IST, failback)")
        await asyncio.to_thread(g.restart, db1)
        await self.until(lambda: g.synced(db1), 120, "db1 is Synced again")
        await self.until(lambda: g.writers().get("db1") == "UP", 30, "the balancer sends to db1 again")
        fault.note = f"db1 back after {time.time() - fault.t0:.1f} s"
        await asyncio.sleep(settle)

    def db_written_since(self, load: Load, t0: float) -> bool:
        return any(ok and end > t0 and start > t0 for start, end, ok in load.db_beats[-200:])

    def begin(self, name: str) -> Fault:
        now = time.time()
        if self.faults:
            self.faults[-1].t1 = now
        fault = Fault(name, now)
        self.faults.append(fault)
        say(f"fault: {name}")
        return fault

    async def faults_services(self, client: httpx.AsyncClient, settle: float) -> None:
        edge, nats = self.edge, self.nats
        assert edge is not None and nats is not None

        # The gateway replica holding the most robots.
        counts = {
            sv: int(r["scur"])
            for (px, sv), r in layout.stats(edge.stats_port).items()
            if px == "gateway" and sv in ("gw1", "gw2")
        }
        victim_sv = max(counts, key=lambda k: counts[k])
        victim = next(s for s in edge.of("gateway") if s.index == int(victim_sv[-1]))
        other_sv = "gw2" if victim_sv == "gw1" else "gw1"
        fault = self.begin(f"SIGKILL gateway replica ({victim.name}, {counts[victim_sv]} robots)")
        victim.proc.kill()

        def moved() -> bool:
            st = layout.stats(edge.stats_port)
            return int(st[("gateway", other_sv)]["scur"]) >= len(self.robots)

        moved_at = await self.until(moved, 60, "every robot reconnected to the other gateway replica")
        fault.signals["robots reconnected"] = moved_at - fault.t0

        async def none_disconnected() -> bool:
            return all(s != "Disconnected" for s in (await self.robot_statuses(client)).values())

        await self.until(none_disconnected, 30, "no robot Disconnected")
        await asyncio.to_thread(edge.restart, victim)  # two replicas again for what follows
        await asyncio.sleep(settle)

        # The scheduler replica doing the most work (CPU over the last seconds).
        schedulers = edge.of("scheduler")
        before = {s.name: s.proc.cpu_s() for s in schedulers}
        await asyncio.sleep(3)
        busy = max(schedulers, key=lambda s: s.proc.cpu_s() - before[s.name])
        self.begin(f"SIGKILL busiest scheduler replica ({busy.name})")
        busy.proc.kill()
        await asyncio.sleep(settle + 3)
        await asyncio.to_thread(edge.restart, busy)

        self.begin("restart one NATS node (nats2)")
        await asyncio.to_thread(nats.procs[1].stop)
        await asyncio.to_thread(nats.start, [1])
        await self.until(nats.routed, 30, "nats2 routed again")
        await asyncio.sleep(settle + 3)

        self.begin("restart all of NATS")
        for proc in nats.procs:
            await asyncio.to_thread(proc.kill)
        await asyncio.to_thread(nats.start)
        await self.until(nats.routed, 30, "the NATS cluster routed again")
        await asyncio.sleep(settle + 5)

    # -- the whole run ------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        await asyncio.to_thread(self.build)
        assert self.edge is not None
        monitor = Monitor(
            self.galera.stats_port if self.galera else self.patroni.stats_port, self.edge.stats_port
        )
        monitor.start()
        async with httpx.AsyncClient(base_url=self.edge.api_url, timeout=20) as client:
            process_id, group_id = await self.people(client)
            ids_dir = self.work / "ids"
            ids_dir.mkdir()
            assert self.queue is not None
            load = Load(
                self.edge.api_url, self.token, process_id, group_id, ids_dir, self.args.rate, self.queue
            )
            if self.galera is not None:
                probe = threading.Thread(
                    target=load.run_db_probe,
                    args=(self.galera.proxy_port, self.secrets.admin_password),
                    daemon=True,
                )
            else:
                probe = threading.Thread(target=self.patroni.run_db_probe, args=(load,), daemon=True)
            probe.start()
            jobs = asyncio.create_task(load.run_jobs())
            t_load = time.time()
            self.begin("none (load only, reference)")
            settle = self.args.settle
            try:
                await asyncio.sleep(settle + 3)
                if self.galera is not None:
                    await self.faults_mariadb(load, settle)
                else:
                    await self.patroni.faults(self, load, settle)
                await self.faults_services(client, settle)
                self.faults[-1].t1 = time.time()
            finally:
                await load.stop()
                jobs.cancel()
                probe.join(5)
            say(f"load stopped after {time.time() - t_load:.0f} s; waiting for every job to end")
            await self.drain(load)
            monitor.stop.set()
            result = await self.verify(load, client, monitor)
            # What the balancers saw, each change once (seconds since the load started).
            changes, previous = [], None
            for t, row in monitor.samples:
                if row != previous:
                    changes.append([round(t - t_load, 1), row])
                    previous = row
            result["balancer_changes"] = changes
            # Where the bare database writer stalled (seconds since the load started, length).
            beats = [end for _, end, ok in load.db_beats if ok]
            result["db_stalls"] = [
                [round(a - t_load, 1), round(b - a, 2)] for a, b in itertools.pairwise(beats) if b - a > 0.5
            ]
        return result

    async def drain(self, load: Load) -> None:
        """Until every acknowledged job has ended (and, with the task load, every acknowledged task:
        a queue worker job is started every 3 s while tasks wait), at most 120 s."""
        settings = self.settings()
        import sqlalchemy as sa

        from rpa_common.db.engine import create_engine, session_factory
        from rpa_common.models import Job

        engine = create_engine(settings, "cli", pool_size=1)

        async def open_jobs() -> int:
            ids = [uuid.UUID(j.job_id) for j in load.acked() if j.job_id]
            async with session_factory(engine)() as s:
                n = 0
                for i in range(0, len(ids), 500):
                    query = sa.select(sa.func.count()).where(
                        Job.id.in_(ids[i : i + 500]), Job.state.not_in(FINAL)
                    )
                    n += (await s.execute(query)).scalar_one()
                return int(n)

        async def open_tasks() -> int:
            from rpa_common.models import Task

            async with session_factory(engine)() as s:
                query = sa.select(sa.func.count()).where(
                    Task.queue_id == uuid.UUID(load.queue.queue_id),
                    Task.state.in_(("Created", "In Progress")),
                )
                return int((await s.execute(query)).scalar_one())

        try:
            deadline = time.monotonic() + 120
            last_worker = 0.0
            while time.monotonic() < deadline:
                jobs_left, tasks_left = await open_jobs(), await open_tasks()
                if not jobs_left and not tasks_left:
                    break
                if tasks_left and time.monotonic() - last_worker > 3:
                    load.job("worker")
                    last_worker = time.monotonic()
                await asyncio.sleep(1)
            await load.settle()
            while (jobs_left := await open_jobs()) and time.monotonic() < deadline:
                await asyncio.sleep(1)
            if jobs_left:
                self.failures.append(
                    f"{jobs_left} acknowledged jobs did not end within 120 s of the load's end"
                )
            if tasks_left := await open_tasks():
                self.failures.append(
                    f"{tasks_left} tasks still waiting or in progress 120 s after the load's end"
                )
        finally:
            await engine.dispose()
            await load.close()

    def settings(self) -> Any:
        from rpa_common.settings import Settings

        env = self.service_env()
        return Settings(
            db_driver=env["RPA_DB_DRIVER"],  # type: ignore[arg-type]
            db_host=env["RPA_DB_HOST"],
            db_port=int(env["RPA_DB_PORT"]),
            db_user="rpa",
            db_password=self.secrets.db_password,  # type: ignore[arg-type]
            db_name="rpa",
        )

    async def verify(self, load: Load, client: httpx.AsyncClient, monitor: Monitor) -> dict[str, Any]:
        import sqlalchemy as sa

        from rpa_common.db.engine import create_engine, session_factory
        from rpa_common.models import Job, JobEvent, RobotMessage

        acked = load.acked()
        ids = [uuid.UUID(j.job_id) for j in acked if j.job_id]
        engine = create_engine(self.settings(), "cli", pool_size=1)
        jobs: dict[str, Any] = {}
        events: dict[str, list[Any]] = {}
        messages: dict[str, list[str]] = {}
        by_key: dict[str, int] = {}
        try:
            async with session_factory(engine)() as s:
                for i in range(0, len(ids), 300):
                    part = ids[i : i + 300]
                    for job in (await s.execute(sa.select(Job).where(Job.id.in_(part)))).scalars():
                        jobs[str(job.id)] = job
                        if job.idempotency_key:
                            by_key[job.idempotency_key] = by_key.get(job.idempotency_key, 0) + 1
                    for ev in (
                        await s.execute(sa.select(JobEvent).where(JobEvent.job_id.in_(part)))
                    ).scalars():
                        events.setdefault(str(ev.job_id), []).append(ev)
                    rows = await s.execute(
                        sa.select(RobotMessage.job_id, RobotMessage.id).where(RobotMessage.job_id.in_(part))
                    )
                    for job_id, msg_id in rows:
                        messages.setdefault(str(job_id), []).append(str(msg_id))
                keys = [j.key for j in load.jobs]
                for i in range(0, len(keys), 300):
                    rows = await s.execute(
                        sa.select(Job.idempotency_key, sa.func.count())
                        .where(Job.idempotency_key.in_(keys[i : i + 300]))
                        .group_by(Job.idempotency_key)
                    )
                    for key, n in rows:
                        by_key[key] = int(n)
        finally:
            await engine.dispose()

        problems: dict[str, list[str]] = {}

        def problem(job: Created, what: str) -> None:
            problems.setdefault(job.key, []).append(what)

        lost_jobs = lost_lines = replanned = logged_total = 0
        holds: dict[str, list[tuple[str, int, float, str]]] = {}  # task id -> (event, lock token, time, job)
        for job in acked:
            assert job.job_id is not None
            row = jobs.get(job.job_id)
            if row is None:
                lost_jobs += 1
                problem(job, "acknowledged job missing")
                continue
            if len(job.replies) != 1 or by_key.get(job.key, 0) != 1:
                problem(job, f"key answered {len(job.replies)} ids, {by_key.get(job.key, 0)} jobs stored")
            evs = events.get(job.job_id, [])
            terminal = [e for e in evs if str(e.to_state) in FINAL]
            running = [e for e in evs if str(e.to_state) == "Running"]
            if len(terminal) != 1 or str(row.state) != "Successful":
                problem(job, f"state {row.state}, {len(terminal)} terminal transitions")
            if len(running) != 1:
                problem(job, f"ran {len(running)} times (attempt {row.attempt})")
            if row.attempt != 1:
                replanned += 1
            lines = job.ids_file.read_text().splitlines() if job.ids_file.exists() else []
            if job.kind == "worker":
                records = [line.split() for line in lines]
                starts = sum(1 for r in records if r[0] == "start")
                if starts != 1:
                    problem(job, f"the worker script ran {starts} times")
                logged = [r[1] for r in records if r[0] == "log"]
                for r in records:
                    if r[0] not in ("start", "log"):
                        holds.setdefault(r[1], []).append((r[0], int(r[2]), float(r[3]), job.key))
            else:
                logged = [line.strip() for line in lines if line.strip()]
                if len(logged) != LOG_LINES:
                    problem(
                        job, f"the script logged {len(logged)} lines (ran {len(logged) / LOG_LINES:g} times)"
                    )
            logged_total += len(logged)
            stored = set(messages.get(job.job_id, []))
            missing = [m for m in logged if m not in stored]
            lost_lines += len(missing)
            if missing:
                problem(job, f"{len(missing)} acknowledged log lines missing")
        # Jobs answered for no key at all (a 2xx never seen) may exist: they are not acknowledged.
        doubled = sum(1 for p in problems.values() if any("ran" in w or "key answered" in w for w in p))
        tasks = await self.verify_tasks(load, holds)

        # Per fault: recovery of the database and of the services, what was acknowledged then.
        db_done = [end for _, end, ok in load.db_beats if ok]
        api_done = [a.end for j in load.jobs for a in j.attempts if a.status in (200, 201)]
        dispatch = [e.at.timestamp() for evs in events.values() for e in evs if str(e.to_state) == "Starting"]
        gateway = [
            e.at.timestamp()
            for evs in events.values()
            for e in evs
            if str(e.to_state) in ("Running", "Successful")
        ]
        statuses_seen: dict[str, int] = {}
        for j in [*load.jobs, *load.added]:
            for a in j.attempts:
                k = str(a.status or "no answer") + (" Retry-After" if a.retry_after else "")
                statuses_seen[k] = statuses_seen.get(k, 0) + 1
        http_5xx = sum(
            1
            for j in [*load.jobs, *load.added]
            for a in j.attempts
            if a.status and a.status >= 500 and not (a.status == 503 and a.retry_after)
        )

        def tunnels(row: dict[str, str]) -> int:
            return sum(int(v.rsplit("/", 1)[1]) for k, v in row.items() if k in ("gw1", "gw2") and "/" in v)

        # Every robot connected (HAProxy's robot tunnels, sampled every 0.2 s).
        all_connected = [t for t, row in monitor.samples if tunnels(row) >= len(self.robots)]
        for f in self.faults:
            f.db_s = outage(f.t0, f.t1, db_done)
            f.signals["every robot connected"] = outage(f.t0, f.t1, all_connected)
            f.signals.update(
                {
                    "API writes": outage(f.t0, f.t1, api_done),
                    "dispatch (scheduler)": outage(f.t0, f.t1, dispatch),
                    "robot reports (gateway)": outage(f.t0, f.t1, gateway),
                }
            )
            f.service_s = max(f.signals.values())
            in_window = [j for j in acked if j.acked_at and f.t0 <= j.acked_at < f.t1]
            tasks_in_window = [t for t in load.acked_tasks() if t.acked_at and f.t0 <= t.acked_at < f.t1]
            f.acknowledged = len(in_window) + len(tasks_in_window)
            f.found = sum(1 for j in in_window if j.job_id in jobs) + sum(
                1 for t in tasks_in_window if t.found
            )
            f.doubled = sum(
                1
                for j in in_window
                if any("ran" in w or "key answered" in w for w in problems.get(j.key, []))
            )
            window = [a for j in [*load.jobs, *load.added] for a in j.attempts if f.t0 <= a.start < f.t1]
            f.http_5xx = sum(
                1 for a in window if a.status and a.status >= 500 and not (a.status == 503 and a.retry_after)
            )
            f.http_503_retry_after = sum(1 for a in window if a.status == 503 and a.retry_after)

        # Never two writers: the commit order of the node that lived through the run.
        writers = self.writer_runs()
        statuses = await self.robot_statuses(client)
        left_disconnected = [r for r, s in statuses.items() if s == "Disconnected"]

        max_over = max(f.service_s - f.db_s for f in self.faults)
        result = {
            "db": self.args.db,
            "faults": [
                {
                    "fault": f.name,
                    "db_recovery_s": round(f.db_s, 2),
                    "service_recovery_s": round(f.service_s, 2),
                    "over_db_s": round(f.service_s - f.db_s, 2),
                    "signals_s": {k: round(v, 2) for k, v in f.signals.items()},
                    "acknowledged": f.acknowledged,
                    "found": f.found,
                    "doubled": f.doubled,
                    "http_5xx": f.http_5xx,
                    "http_503_retry_after": f.http_503_retry_after,
                    "note": f.note,
                }
                for f in self.faults
            ],
            "jobs_acknowledged": len(acked),
            "jobs_not_acknowledged": len(load.jobs) - len(acked),
            "log_lines_acknowledged": logged_total,
            "tasks": tasks,
            "lost": lost_jobs + lost_lines + tasks["lost"],
            "lost_jobs": lost_jobs,
            "lost_log_lines": lost_lines,
            "duplicates": doubled
            + tasks["doubled_names"]
            + tasks["finished_twice"]
            + tasks["held_by_two_robots_at_once"],
            "jobs_planned_again": replanned,
            "http_statuses": statuses_seen,
            "http_5xx": http_5xx,
            "max_recovery_s": round(max(f.service_s for f in self.faults), 2),
            "max_over_db_s": round(max_over, 2),
            "writer_runs": writers,
            "robots_left_disconnected": len(left_disconnected),
            "unexpected_answers": load.unexpected[:20],
            "problems": dict(list(problems.items())[:20]),
            "machine": {"cores": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 1)},
        }
        # A run that did not work cannot pass: every creation acknowledged in the end, and work done.
        if result["jobs_not_acknowledged"] or len(acked) < 20:
            self.failures.append(
                f"{len(acked)} jobs acknowledged, {result['jobs_not_acknowledged']} never (the clients gave up)"
            )
        if tasks["not_acknowledged"] or tasks["acknowledged"] < 10 or not tasks["holds_recorded"]:
            self.failures.append(f"task load too thin or not acknowledged: {tasks}")
        if result["lost"]:
            self.failures.append(
                f"{lost_jobs} acknowledged jobs and {lost_lines} acknowledged log lines missing"
            )
        if doubled:
            self.failures.append(f"{doubled} jobs doubled or run more than once")
        if problems and not (result["lost"] or doubled):
            self.failures.append(f"{len(problems)} jobs did not end Successful once")
        if http_5xx:
            self.failures.append(f"{http_5xx} answers 5xx (other than 503 with Retry-After)")
        if load.unexpected:
            self.failures.append(f"{len(load.unexpected)} unexpected 4xx answers, e.g. {load.unexpected[0]}")
        for f in self.faults:
            if f.service_s - f.db_s > MAX_OVER_DB_S:
                self.failures.append(
                    f"{f.name}: services wrote again {f.service_s - f.db_s:.2f} s after the database (> {MAX_OVER_DB_S} s)"
                )
        if left_disconnected:
            self.failures.append(f"{len(left_disconnected)} robots left Disconnected")
        if writers.get("verdict") != "one writer at a time":
            self.failures.append(f"database writers: {writers}")
        return result

    async def verify_tasks(
        self, load: Load, holds: dict[str, list[tuple[str, int, float, str]]]
    ) -> dict[str, Any]:
        """Every acknowledged task exists and ended Successful once; no two robots held one at once
        (two holds of one task that overlap in time and were both finished without refusal)."""
        import sqlalchemy as sa

        from rpa_common.db.engine import create_engine, session_factory
        from rpa_common.models import Task, TaskEvent

        engine = create_engine(self.settings(), "cli", pool_size=1)
        try:
            async with session_factory(engine)() as s:
                rows = list(
                    (
                        await s.execute(
                            sa.select(Task).where(Task.queue_id == uuid.UUID(load.queue.queue_id))
                        )
                    ).scalars()
                )
                ids = [r.id for r in rows]
                finishes: dict[str, int] = {}
                for i in range(0, len(ids), 300):
                    query = sa.select(TaskEvent.task_id, sa.func.count()).where(
                        TaskEvent.task_id.in_(ids[i : i + 300]), TaskEvent.to_state == "Successful"
                    )
                    for task_id, n in await s.execute(query.group_by(TaskEvent.task_id)):
                        finishes[str(task_id)] = int(n)
        finally:
            await engine.dispose()
        by_name: dict[str, list[Any]] = {}
        for r in rows:
            by_name.setdefault(r.name, []).append(r)
        acked = load.acked_tasks()
        lost = [t.name for t in acked if t.name not in by_name]
        doubled = [name for name, found in by_name.items() if len(found) > 1]
        unfinished = [
            t.name for t in acked if t.name in by_name and str(by_name[t.name][0].state) != "Successful"
        ]
        finished_twice = [task_id for task_id, n in finishes.items() if n > 1]
        two_at_once = []
        retaken = 0
        for task_id, events in holds.items():
            spans: dict[int, list[Any]] = {}
            for kind, token, t, job in events:
                span = spans.setdefault(token, [None, None, None, job])
                if kind == "take":
                    span[0] = t
                else:
                    span[1], span[2] = t, kind
            retaken += max(0, len(spans) - 1)
            done = [v for v in spans.values() if v[2] in ("done", "journaled") and v[0] is not None]
            for a, b in itertools.combinations(done, 2):
                if a[0] < (b[1] or float("inf")) and b[0] < (a[1] or float("inf")):
                    two_at_once.append(task_id)
        for t in acked:
            t.found = t.name in by_name
        result = {
            "acknowledged": len(acked),
            "not_acknowledged": len(load.added) - len(acked),
            "found": len(acked) - len(lost),
            "lost": len(lost),
            "doubled_names": len(doubled),
            "not_successful": len(unfinished),
            "finished_twice": len(finished_twice),
            "held_by_two_robots_at_once": len(two_at_once),
            "taken_again_after_a_lost_lock": retaken,
            "holds_recorded": sum(len(v) for v in holds.values()),
        }
        if lost or doubled or finished_twice or two_at_once or unfinished:
            self.failures.append(f"tasks: {result}")
        return result

    def writer_runs(self) -> dict[str, Any]:
        if self.galera is None:
            return dict(self.patroni.writer_check())
        origins = self.galera.origins(self.galera.nodes[1])  # db2 lived through the whole run
        runs: list[list[int]] = []
        for server_id in origins:
            if runs and runs[-1][0] == server_id:
                runs[-1][1] += 1
            else:
                runs.append([server_id, 1])
        sequence = [f"db{s} x{n}" for s, n in runs]
        # db1 writes, db2 takes over when db1 is killed, db1 again after failback: three runs.
        expected = [1, 2, 1]
        ok = [s for s, _ in runs] == expected
        return {
            "method": "binary log of db2 (it lived through the run): the originating server of every transaction, in commit order",
            "transactions": len(origins),
            "sequence": sequence,
            "verdict": "one writer at a time"
            if ok
            else f"expected writers {expected}, found {[s for s, _ in runs]}",
        }

    def close(self) -> None:
        if self.patroni is not None:
            with contextlib.suppress(Exception):
                self.patroni.close()
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                if proc.name.startswith(("robot", "api", "gateway", "scheduler")):
                    proc.stop(10)
                else:
                    proc.kill()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)


def print_table(result: dict[str, Any]) -> None:
    print()
    print(f"failover test ({result['db']}): every fault with load running")
    head = f"{'fault':<48}{'db s':>7}{'svc s':>7}{'over':>7}{'acked':>7}{'found':>7}{'dbl':>5}{'5xx':>5}{'503RA':>6}"
    print(head)
    print("-" * len(head))
    for f in result["faults"]:
        print(
            f"{f['fault']:<48}{f['db_recovery_s']:>7.2f}{f['service_recovery_s']:>7.2f}{f['over_db_s']:>7.2f}"
            f"{f['acknowledged']:>7}{f['found']:>7}{f['doubled']:>5}{f['http_5xx']:>5}{f['http_503_retry_after']:>6}"
        )
    print("-" * len(head))
    print(
        f"jobs acknowledged {result['jobs_acknowledged']}, log lines acknowledged {result['log_lines_acknowledged']}; "
        f"lost {result['lost']}, duplicates {result['duplicates']}, 5xx {result['http_5xx']}; "
        f"max recovery {result['max_recovery_s']} s, max over the database {result['max_over_db_s']} s"
    )
    for f in result["faults"]:
        detail = ", ".join(f"{k} {v}" for k, v in f["signals_s"].items())
        print(f"  {f['fault']}: {detail}{'; ' + f['note'] if f['note'] else ''}")
    print(
        f"client answers: {result['http_statuses']}; jobs planned again (not run twice): {result['jobs_planned_again']}"
    )
    print(f"tasks: {result['tasks']}")
    w = result["writer_runs"]
    print(f"writers: {w.get('verdict')} ({w.get('method')}: {' -> '.join(w.get('sequence', []))})")
    m = result["machine"]
    print(f"machine: {m['cores']} cores, load average {m['load_average_1m']} (1 min) at the end")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="failover-test", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("mariadb", "postgresql"), default="mariadb")
    parser.add_argument(
        "--json", type=Path, default=os.environ.get("FAILOVER_JSON") or None, help="write the summary here"
    )
    parser.add_argument("--rate", type=float, default=2.0, help="jobs created per second")
    parser.add_argument("--robots", type=int, default=4)
    parser.add_argument("--settle", type=float, default=4.0, help="seconds of load between faults")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(
            "failover-test: needs root (it installs Debian packages and runs servers as their users)",
            file=sys.stderr,
        )
        return 2
    # HAProxy's configurations ask for tens of thousands of connections (maxconn): raise the limit
    # of open files that the children inherit.
    import resource

    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (200_000, 200_000))
    run = Run(args)
    started = time.monotonic()
    try:
        result = asyncio.run(run.run())
    except BaseException as exc:
        say(f"the run broke: {type(exc).__name__}: {exc}")
        run.args.keep = True
        say(f"logs kept in {run.work}")
        run.close()
        return 1
    result["duration_s"] = round(time.monotonic() - started)
    if run.failures:
        run.args.keep = True
    run.close()
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if run.failures:
        print("\nFAILED:\n  " + "\n  ".join(run.failures))
        print(f"(logs kept in {run.work})")
        return 1
    print(f"\npassed in {result['duration_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
