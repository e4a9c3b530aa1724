"""Fixtures for the end-to-end tests: the whole product as separate processes.

Each test gets a ``Stack`` of its own: REAL ``python -m rpa_scheduler serve``, ``python -m
rpa_gateway serve`` and ``python -m rpa_coordinator serve`` processes, and REAL reference robots
(``python -m rpa_robot run``), all on the test's database backend and the real NATS. Every process
writes its stdout/stderr to a file of the test's ``tmp_path`` (shown when a test fails, grepped for
secrets), and the stack's finalizer ends every process it started, with their descendants.

People's side goes through the API (the ``client``/``tenant`` fixtures, in this process): processes
are published as zips of ``examples/<name>``, robots created with ``POST /api/v1/robots`` (their keys
come from the answer), jobs created, stopped and read through ``/api/v1/jobs``. The database is read
directly only for what the API does not show (robot messages, terminal sessions, job events of many
jobs at once).

Service settings are short so that time-driven behaviour shows within seconds (``SHORT``): a lease of
3 s, heartbeats every 0.5 s, a sweep every 0.5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest
import sqlalchemy as sa

from rpa_common.models import JobEvent, RobotMessage
from rpa_common.service import ServiceContext
from tests.conftest import NATS_URL, ROOT, Tenant
from tests.support import eventually, free_port, robot_argv

T = TypeVar("T")

EXAMPLES = Path(ROOT) / "examples"
API = "/api/v1"
FINAL_STATES = ("Successful", "Failed", "Stopped", "Interrupted")

SHORT: dict[str, str] = {
    "RPA_JOB_LEASE_S": "3",
    "RPA_HEARTBEAT_INTERVAL_S": "0.5",
    "RPA_SWEEP_INTERVAL_S": "0.5",
}
"""Time-driven settings of every service process unless a test says otherwise."""

_SERVICES = {
    "api": ("rpa_api", "RPA_API_PORT"),
    "scheduler": ("rpa_scheduler", "RPA_SCHEDULER_PORT"),
    "gateway": ("rpa_gateway", "RPA_GATEWAY_PORT"),
    "coordinator": ("rpa_coordinator", "RPA_COORDINATOR_PORT"),
}


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ``RPA_`` setting (each child gets its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPA_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _kill_all(procs: Iterable[psutil.Process]) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie waiting for its parent counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Child:
    """A process this test started, with its output in a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.known_descendants: set[psutil.Process] = set()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=log)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    def remember_descendants(self) -> list[psutil.Process]:
        """The process's descendants now (kept, so they can be killed after the parent died)."""
        found = _descendants(self.pid) if self.running() else []
        self.known_descendants.update(found)
        return found

    def kill(self) -> None:
        """A crash: SIGKILL, no goodbye. Its descendants are left as a crash leaves them."""
        if self.running():
            assert self.proc is not None
            self.remember_descendants()
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (the process cleans up after itself), SIGKILL when it takes too long; then any
        descendant still alive is killed, so no test leaves processes behind."""
        if self.running():
            assert self.proc is not None
            self.remember_descendants()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        _kill_all(self.known_descendants)


class Service(Child):
    """``python -m rpa_<kind> serve`` on a port of its own, ready when ``/readyz`` answers 200."""

    def __init__(self, kind: str, name: str, env: dict[str, str], log_path: Path, port: int) -> None:
        module, port_var = _SERVICES[kind]
        env = {**env, port_var: str(port)}
        super().__init__(name, [sys.executable, "-m", module, "serve"], env, log_path)
        self.kind = kind
        self.port = port

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/robot/v1"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(f"{self.name} exited:\n{self.output()}")
            try:
                if httpx.get(f"{self.http_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready in {timeout} s:\n{self.output()}")


class Stack:
    """The processes of one test. ``start`` starts services in parallel and waits until all are ready."""

    def __init__(self, db_url: str, tmp_path: Path) -> None:
        self.db_url = db_url
        self.dir = tmp_path
        self.children: list[Child] = []

    def _log(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def service(
        self,
        kind: str,
        *,
        name: str | None = None,
        port: int | None = None,
        settings: dict[str, str] | None = None,
        **env: str,
    ) -> Service:
        """A service process, not started yet; ``settings`` and ``env`` override ``SHORT`` and the basics."""
        name = name or f"{kind}-{sum(1 for c in self.children if getattr(c, 'kind', None) == kind)}"
        values = clean_env(
            RPA_DB_URL=self.db_url,
            RPA_NATS_URL=NATS_URL,
            RPA_ENVIRONMENT="test",
            RPA_LOG_JSON="true",
            RPA_DB_POOL_SIZE="5",
            **SHORT,
        )
        values.update(settings or {})
        values.update(env)
        svc = Service(kind, name, values, self._log(name), port or free_port())
        self.children.append(svc)
        return svc

    async def start(self, *services: Service) -> None:
        for svc in services:
            svc.start()
        await asyncio.gather(*(asyncio.to_thread(svc.wait_ready) for svc in services))

    async def restart(self, svc: Service) -> Service:
        """A new process of the same service, same settings and port (after ``kill`` or ``stop``)."""
        again = Service(svc.kind, f"{svc.name}-again", svc.env, self._log(f"{svc.name}-again"), svc.port)
        self.children.append(again)
        await self.start(again)
        return again

    def robot(self, gateway_url: str, key: str, *extra: str, name: str | None = None) -> Child:
        """``python -m rpa_robot run`` with its key in its environment (never on its command line)."""
        name = name or f"robot-{sum(1 for c in self.children if c.name.startswith('robot-'))}"
        home = self.dir / name
        argv = robot_argv(gateway_url, home, *extra)
        child = Child(name, argv, clean_env(RPA_ROBOT_KEY=key), self._log(name))
        self.children.append(child)
        child.start()
        return child

    def log_files(self) -> list[Path]:
        """Every log file of this test's processes (robots started by a coordinator included)."""
        return sorted(p for p in self.dir.rglob("*.log") if p.is_file())

    def report(self, tail: int = 2500) -> str:
        """The end of every process's output, for an assertion message."""
        parts = []
        for path in self.log_files():
            text = path.read_text(errors="replace")
            parts.append(f"----- {path.relative_to(self.dir)} -----\n{text[-tail:]}")
        return "\n".join(parts)

    def close(self) -> None:
        # Robots first (a robot killed with its gateway gone only waits for its reconnect).
        for child in reversed(self.children):
            if not isinstance(child, Service):
                child.stop(timeout=10)
        for child in reversed(self.children):
            if isinstance(child, Service):
                child.stop()


@pytest.fixture
async def stack(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    s = Stack(db_url, tmp_path)
    try:
        yield s
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(s.report())  # shown with the failure (captured output)
        await asyncio.to_thread(s.close)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


# The API, as a user or a CI pipeline drives it ---------------------------------------------------


def example_zip(example: str) -> bytes:
    """``examples/<example>`` as a package: its files at the zip's root."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted((EXAMPLES / example).iterdir()):
            if path.is_file() and path.suffix in (".py", ".json"):
                zf.write(path, path.name)
    return buf.getvalue()


@dataclass
class Api:
    client: httpx.AsyncClient
    tenant: Tenant
    processes: dict[str, str] = field(default_factory=dict)

    @property
    def ctx(self) -> ServiceContext:
        return self.tenant.ctx

    async def call(
        self, method: str, path: str, expect: int | tuple[int, ...] = (200, 201), **kw: Any
    ) -> Any:
        r = await self.client.request(method, API + path, headers=self.tenant.headers, **kw)
        wanted = (expect,) if isinstance(expect, int) else expect
        assert r.status_code in wanted, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    async def publish(self, example: str) -> str:
        """Publish ``examples/<example>`` (remote publishing); the process id."""
        if example not in self.processes:
            r = await self.client.post(
                f"{API}/processes/publish",
                files={"package": (f"{example}.zip", example_zip(example), "application/zip")},
                headers=self.tenant.headers,
            )
            assert r.status_code == 201, r.text
            self.processes[example] = r.json()["process"]["id"]
        return self.processes[example]

    async def robot(self, name: str | None = None, role: str = "unattended") -> tuple[str, str]:
        """A new robot: (id, key). The key is in this answer only."""
        body = await self.call(
            "POST", "/robots", 201, json={"name": name or f"bot-{uuid.uuid4().hex[:8]}", "role": role}
        )
        return body["id"], body["key"]

    async def group(self, robot_ids: list[str], name: str | None = None) -> str:
        body = await self.call(
            "POST",
            "/robot-groups",
            201,
            json={"name": name or f"group-{uuid.uuid4().hex[:8]}", "robot_ids": robot_ids},
        )
        return str(body["id"])

    async def job(
        self, example: str, *, robot: str | None = None, group: str | None = None, **fields: Any
    ) -> str:
        body: dict[str, Any] = {"process_id": await self.publish(example), **fields}
        if robot is not None:
            body["robot_id"] = robot
        if group is not None:
            body["robot_group_id"] = group
        created = await self.call("POST", "/jobs", 201, json=body)
        assert created["state"] == "Pending"
        return str(created["id"])

    async def get_job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = await self.call("GET", f"/jobs/{job_id}", 200)
        return job

    async def get_robot(self, robot_id: str) -> dict[str, Any]:
        robot: dict[str, Any] = await self.call("GET", f"/robots/{robot_id}", 200)
        return robot

    async def wait_job(
        self, job_id: str, *states: str, timeout: float = 30, stack: Stack | None = None
    ) -> dict[str, Any]:
        """Poll ``GET /jobs/{id}`` until the job is in one of ``states`` (default: any final one)."""
        wanted = states or FINAL_STATES
        job: dict[str, Any] = {}

        async def check() -> dict[str, Any] | None:
            nonlocal job
            job = await self.get_job(job_id)
            return job if job["state"] in wanted else None

        try:
            return await eventually(check, timeout, f"job in {wanted}")
        except AssertionError:
            history = [(h["from_state"], h["to_state"], h["reason"]) for h in job.get("history", [])]
            detail = stack.report() if stack else ""
            raise AssertionError(
                f"job is {job.get('state')} (error {job.get('error')!r}, history {history}), "
                f"expected {wanted}\n{detail}"
            ) from None

    async def wait_robot(
        self, robot_id: str, status: str, timeout: float = 20, stack: Stack | None = None
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            robot = await self.get_robot(robot_id)
            return robot if robot["status"] == status else None

        try:
            return await eventually(check, timeout, f"robot {status}")
        except AssertionError:
            raise AssertionError(f"robot not {status}\n{stack.report() if stack else ''}") from None


@pytest.fixture
def api(client: httpx.AsyncClient, tenant: Tenant) -> Api:
    return Api(client, tenant)


def history(job: dict[str, Any]) -> list[tuple[str | None, str]]:
    return [(h["from_state"], h["to_state"]) for h in job["history"]]


# Waiting and reading -----------------------------------------------------------------------------


async def job_messages(ctx: ServiceContext, job_id: str) -> list[RobotMessage]:
    """The job's log lines (``robot_message``), oldest first."""
    async with ctx.sessions() as session:
        rows = await session.execute(
            sa.select(RobotMessage).where(RobotMessage.job_id == uuid.UUID(job_id)).order_by(RobotMessage.at)
        )
        return list(rows.scalars())


async def job_events(ctx: ServiceContext, job_ids: Iterable[str]) -> dict[str, list[JobEvent]]:
    """Every transition of each job, oldest first."""
    ids = [uuid.UUID(j) for j in job_ids]
    out: dict[str, list[JobEvent]] = {str(j): [] for j in ids}
    async with ctx.sessions() as session:
        for start in range(0, len(ids), 200):
            rows = await session.execute(
                sa.select(JobEvent)
                .where(JobEvent.job_id.in_(ids[start : start + 200]))
                .order_by(JobEvent.at, JobEvent.id)
            )
            for event in rows.scalars():
                out[str(event.job_id)].append(event)
    return out
