"""Private servers, a fresh database built from the migrations, the services as real processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from rpa_common.db.admin import create_database, drop_database  # noqa: E402
from rpa_common.db.engine import create_engine, session_factory  # noqa: E402
from rpa_common.db.uow import run_in_transaction  # noqa: E402
from rpa_common.models import Process, ProcessVersion, Robot, RobotGroup, RobotGroupMember, User  # noqa: E402
from rpa_common.models.enums import RobotRole  # noqa: E402
from rpa_common.security import issue_access_token, make_key  # noqa: E402
from rpa_common.settings import Settings  # noqa: E402

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SECRET = "bench-secret-" + uuid.uuid4().hex
ADMIN_USER = "bench-admin"
ADMIN_PASSWORD = "bench password 1234"  # a throwaway database's throwaway user


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit (children inherit it); the limit now in force.

    Root may raise the hard limit too; anyone else gets at most the hard limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
        return wanted
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def print_table(title: str, rows: Sequence[tuple[str, Any]]) -> None:
    width = max(len(name) for name, _ in rows) + 2
    vwidth = max(14, *(len(str(value)) for _, value in rows))
    print()
    print(title)
    print(f"{'metric':<{width}}{'value':>{vwidth}}")
    print("-" * (width + vwidth))
    for name, value in rows:
        print(f"{name:<{width}}{value!s:>{vwidth}}")
    # Other work on the machine skews latency and throughput (not memory): say how busy it was.
    one, five, _ = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {one:.1f} (1 min), {five:.1f} (5 min) at the end")


def ratio(value: float, floor: float) -> str:
    """``value / floor`` as text ("n/a" when either is missing)."""
    if not floor or value != value or floor != floor:  # zero or NaN
        return "n/a"
    return f"{value / floor:.2f}x"


# Processes ---------------------------------------------------------------------------------------


@dataclass
class Services:
    """Child processes, each logging to its own file in ``log_dir``; stopped in reverse order."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rpa-bench-")))

    def start(self, name: str, argv: list[str], env: dict[str, str], **popen: Any) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        popen.setdefault("stdout", log)
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stderr=log, **popen)
        self.procs.append((name, proc))
        return proc

    def pid(self, name: str) -> int:
        return next(p.pid for n, p in self.procs if n == name)

    def stop(self, only: str | None = None) -> None:
        # The services first (they drain to NATS on the way out), NATS last.
        chosen = [(n, p) for n, p in self.procs if only is None or n == only]
        services = [(n, p) for n, p in reversed(chosen) if n != "nats"]
        nats = [(n, p) for n, p in chosen if n == "nats"]
        for group in (services, nats):
            for _, proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for name, proc in group:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    print(f"{name} did not stop in time; killing it", file=sys.stderr)
                    proc.kill()
                    proc.wait()
        self.procs = [(n, p) for n, p in self.procs if (n, p) not in chosen]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` and its live children (the API runs
    one worker process per core under uvicorn's supervisor); 0 when it is gone."""
    try:
        parent = psutil.Process(pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


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


async def start_nats(services: Services, jetstream: bool = False) -> str:
    """A private NATS server: other processes on a shared NATS would take the services' messages.
    ``jetstream``: with JetStream (a store in the log folder), for the event stream's relay."""
    port = free_port()
    argv = [str(ROOT / ".venv/bin/nats-server"), "-a", "127.0.0.1", "-p", str(port)]
    if jetstream:
        argv += ["-js", "-sd", tempfile.mkdtemp(prefix="jetstream-", dir=services.log_dir)]
    services.start("nats", argv, dict(os.environ))
    await wait_port(port)
    return f"nats://127.0.0.1:{port}"


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


@contextlib.asynccontextmanager
async def fresh_database(tag: str) -> AsyncIterator[str]:
    """A new database built from the migrations on ``RPA_DB_URL``'s server (else the local
    PostgreSQL); dropped on the way out."""
    admin_url = os.environ.get("RPA_DB_URL") or DEFAULT_ADMIN_URL
    name = f"rpa_bench_{tag}_{os.getpid()}"
    await create_database(admin_url, name)
    try:
        url = _with_db(admin_url, name)
        await asyncio.to_thread(migrate, url)
        yield url
    finally:
        await drop_database(admin_url, name)


def service_env(db_url: str, nats_url: str, **settings: str) -> dict[str, str]:
    """The environment of a service process: this one's, minus any ``RPA_`` setting, plus these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPA_")}
    env.update(
        RPA_DB_URL=db_url,
        RPA_NATS_URL=nats_url,
        RPA_SECRET_KEY=SECRET,
        RPA_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        # A service that has to be killed (it did not stop in time) keeps its last log lines.
        PYTHONUNBUFFERED="1",
    )
    env.update(settings)
    return env


def bench_settings(db_url: str, nats_url: str) -> Settings:
    return Settings(db_url=db_url, secret_key=SECRET, nats_url=nats_url)  # type: ignore[arg-type]


async def start_service(
    services: Services, name: str, module: str, env: dict[str, str], port: int
) -> subprocess.Popen[bytes]:
    """``python -m <module> serve``, once its ``/readyz`` answers 200."""
    proc = services.start(name, [sys.executable, "-m", module, "serve"], env)
    await wait_ready(f"http://127.0.0.1:{port}/readyz", proc, name)
    return proc


# Data --------------------------------------------------------------------------------------------


@dataclass
class Account:
    account_id: uuid.UUID
    admin_id: uuid.UUID
    token: str


async def seed_account(settings: Settings) -> Account:
    """The first account and its admin (as ``make run`` makes them), and an access token."""
    from rpa_api.bootstrap import bootstrap

    engine = create_engine(settings, "bench", pool_size=2)
    sessions = session_factory(engine)
    try:
        account, _ = await run_in_transaction(
            sessions, lambda s: bootstrap(s, "bench", ADMIN_USER, ADMIN_PASSWORD)
        )

        async def admin(session: Any) -> uuid.UUID:
            return (  # type: ignore[no-any-return]
                await session.execute(sa.select(User.id).where(User.username == ADMIN_USER))
            ).scalar_one()

        admin_id = await run_in_transaction(sessions, admin)
    finally:
        await engine.dispose()
    token = issue_access_token(settings, user_id=admin_id, account_id=account.id, token_version=0)
    return Account(account.id, admin_id, token)


async def bulk_robots(
    settings: Settings, account_id: uuid.UUID, count: int, *, prefix: str = "bench"
) -> list[tuple[uuid.UUID, str]]:
    """``count`` unattended robots inserted directly, in batches: (id, full key) each.

    Keys are made and hashed as the API makes them (``make_key``), so the gateway checks them as
    it checks any robot key.
    """
    made = [(uuid.uuid4(), make_key("rbk")) for _ in range(count)]
    rows = [
        {
            "id": rid,
            "account_id": account_id,
            "name": f"{prefix}-{i:05d}",
            "description": "",
            "role": RobotRole.UNATTENDED,
            "is_active": True,
            "key_prefix": key.prefix,
            "key_hash": key.hash,
            "inbound_seq": 0,
        }
        for i, (rid, key) in enumerate(made)
    ]
    engine = create_engine(settings, "bench", pool_size=1)
    try:
        for start in range(0, len(rows), 2000):
            batch = rows[start : start + 2000]

            async def insert(session: Any, batch: list[dict[str, Any]] = batch) -> None:
                await session.execute(sa.insert(Robot), batch)

            await run_in_transaction(session_factory(engine), insert)
    finally:
        await engine.dispose()
    return [(rid, key.full) for rid, key in made]


def peer(
    services: Services, name: str, role: str, *argv: str, env: dict[str, str] | None = None, **popen: Any
) -> subprocess.Popen[bytes]:
    """Start ``python -m harness.peers <role> <argv...>`` (see ``harness.peers``), with ``env`` added."""
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "bench"), env.get("PYTHONPATH")]))
    return services.start(name, [sys.executable, "-m", "harness.peers", role, *argv], env, **popen)


@dataclass
class Seed:
    token: str
    process_id: uuid.UUID
    group_id: uuid.UUID
    robot_keys: list[str]


async def seed(settings: Settings, robots: int) -> Seed:
    """The admin, one published process, ``robots`` robots, and one group holding them all."""
    account = await seed_account(settings)
    made = await bulk_robots(settings, account.account_id, robots)
    process_id, version_id, group_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    engine = create_engine(settings, "bench", pool_size=1)
    try:

        async def work(session: Any) -> None:
            session.add(Process(id=process_id, account_id=account.account_id, name="bench-noop"))
            await session.flush()
            session.add(
                ProcessVersion(
                    id=version_id,
                    account_id=account.account_id,
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
            session.add(RobotGroup(id=group_id, account_id=account.account_id, name="bench-robots"))
            await session.flush()
            await session.execute(
                sa.insert(RobotGroupMember), [{"group_id": group_id, "robot_id": rid} for rid, _ in made]
            )

        await run_in_transaction(session_factory(engine), work)
    finally:
        await engine.dispose()
    return Seed(account.token, process_id, group_id, [key for _, key in made])
