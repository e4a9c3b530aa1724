"""``/metrics`` of every service, the Grafana dashboard's metric names, and the counters of shared
code (a database transaction re-run, a NATS connection lost and regained), against real services,
databases and NATS."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from rpa_common import metrics
from rpa_common.db.engine import create_engine, session_factory
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Account, Queue, Task
from rpa_common.models.enums import RobotStatus
from rpa_common.nats.client import connect
from tests.conftest import ROOT, make_settings
from tests.e2e.nats_outage import NatsServer
from tests.support import free_port
from tests.test_services import SERVICES, robot_key, service_env, wait_ready

DASHBOARDS = sorted(Path(ROOT, "deploy", "grafana", "dashboards").glob("*.json"))
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")
TOKEN = "metrics-token-for-the-test"


def families(text: str) -> dict[str, list[Sample]]:
    """Family name (``rpa_http_requests``, without ``_total``) -> its samples."""
    return {f.name: list(f.samples) for f in text_string_to_metric_families(text)}


def dashboard_metrics() -> set[str]:
    """Every ``rpa_*`` name the dashboards' expressions use, as written (``..._total``...)."""
    names: set[str] = set()

    def walk(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    yield value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    for path in DASHBOARDS:
        for expr in walk(json.loads(path.read_text())):
            names |= set(re.findall(r"\b(rpa_[a-z0-9_]+)\b", expr))
    return names


def family_of(name: str, exported: set[str]) -> str | None:
    if name in exported:
        return name
    for suffix in SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in exported:
            return name.removesuffix(suffix)
    return None


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    for s in samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


async def _queue_with_backlog(db_url: str, tasks: int) -> uuid.UUID:
    engine = create_engine(make_settings(db_url), "tests", pool_size=1)
    queue_id = uuid.uuid4()

    async def work(session):  # type: ignore[no-untyped-def]
        account = Account(id=uuid.uuid4(), name=f"metrics-{uuid.uuid4().hex[:8]}")
        session.add(account)
        await session.flush()
        session.add(Queue(id=queue_id, account_id=account.id, name="backlog"))
        await session.flush()
        for n in range(tasks):
            session.add(Task(id=uuid.uuid4(), account_id=account.id, queue_id=queue_id, name=f"t{n}"))

    try:
        await run_in_transaction(session_factory(engine), work)
    finally:
        await engine.dispose()
    return queue_id


async def test_every_service_answers_metrics_and_exports_what_the_dashboard_names(
    db_url: str, tmp_path: Path
) -> None:
    queue_id = await _queue_with_backlog(db_url, 3)
    procs: dict[str, tuple[subprocess.Popen[bytes], int, Path]] = {}
    try:
        for module, port_var in SERVICES:
            port = free_port()
            extra = {port_var: str(port), "RPA_METRICS_SAMPLE_INTERVAL_S": "0.5"}
            if module == "rpa_api":
                extra["RPA_API_WORKERS"] = "2"  # multiprocess mode: /metrics adds both workers up
            if module == "rpa_coordinator":
                extra["RPA_COORDINATOR_KEY"] = await asyncio.to_thread(robot_key, db_url)
                extra["RPA_METRICS_TOKEN"] = TOKEN
            log_path = tmp_path / f"{module}.log"
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", module, "serve"],
                    cwd=ROOT,
                    env=service_env(db_url, **extra),
                    stdout=log,
                    stderr=log,
                )
            procs[module] = (proc, port, log_path)
        for proc, port, _ in procs.values():
            wait_ready(f"http://127.0.0.1:{port}/readyz", proc, timeout=120)

        def url(module: str, path: str) -> str:
            return f"http://127.0.0.1:{procs[module][1]}{path}"

        def scrape(module: str, **headers: str) -> dict[str, list[Sample]]:
            r = httpx.get(url(module, "/metrics"), headers=headers, timeout=10)
            assert r.status_code == 200, (module, r.status_code, r.text)
            assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
            return families(r.text)

        # The API: each request on a new connection, so both workers answer some; the count is theirs added up.
        for _ in range(20):
            assert httpx.get(url("rpa_api", "/healthz"), timeout=10).status_code == 200
        job_id = uuid.uuid4()
        assert httpx.get(url("rpa_api", f"/api/v1/jobs/{job_id}"), timeout=10).status_code == 401
        api = scrape("rpa_api")
        requests = api["rpa_http_requests"]
        assert value(requests, "rpa_http_requests_total", service="api", route="/healthz", status="200") == 20
        assert (
            value(
                requests, "rpa_http_requests_total", route="/api/v1/jobs/{job_id}", status="401", method="GET"
            )
            == 1
        )
        assert not any(str(job_id) in json.dumps(s.labels) for f in api.values() for s in f)
        assert (
            value(
                api["rpa_http_request_duration_seconds"],
                "rpa_http_request_duration_seconds_count",
                route="/healthz",
            )
            == 20
        )

        gateway = scrape("rpa_gateway")
        assert value(gateway["rpa_gateway_robots_connected"], "rpa_gateway_robots_connected") == 0
        assert value(
            gateway["rpa_http_requests"], "rpa_http_requests_total", service="gateway", route="/readyz"
        )

        # The scheduler samples the database every 0.5 s here.
        deadline = time.monotonic() + 30
        while True:
            scheduler = scrape("rpa_scheduler")
            backlog = value(scheduler["rpa_task_backlog"], "rpa_task_backlog", queue=str(queue_id))
            if backlog is not None or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert backlog == 3
        assert {s.labels["state"] for s in scheduler["rpa_jobs"]} == {
            "Pending",
            "Starting",
            "Running",
            "Stopping",
            "Interrupting",
        }
        assert {s.labels["status"] for s in scheduler["rpa_robots"]} == {s.value for s in RobotStatus}
        # The coordinator's robot (made by robot_key) is counted among the Disconnected or Ready.
        assert sum(s.value for s in scheduler["rpa_robots"]) >= 1

        # RPA_METRICS_TOKEN: a bearer token, or 401 problem+json.
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = httpx.get(url("rpa_coordinator", "/metrics"), headers=headers, timeout=10)
            assert r.status_code == 401, headers
            assert r.headers["content-type"] == "application/problem+json"
            assert r.headers["www-authenticate"] == "Bearer"
            assert TOKEN not in r.text
        coordinator = scrape("rpa_coordinator", Authorization=f"Bearer {TOKEN}")
        assert (
            value(
                coordinator["rpa_http_requests"],
                "rpa_http_requests_total",
                service="coordinator",
                status="401",
            )
            == 3
        )

        exported = set(api) | set(gateway) | set(scheduler) | set(coordinator)
        named = dashboard_metrics()
        missing = sorted(n for n in named if family_of(n, exported) is None)
        assert not missing, f"the dashboard names metrics no service exports: {missing}"
        # And the other way round: every metric the services define has its panel.
        shown = {family_of(n, exported) for n in named}
        defined = {m._name for m in metrics.REGISTRY._collector_to_names}  # type: ignore[attr-defined]
        assert defined <= shown, f"metrics without a panel: {sorted(defined - shown)}"
    finally:
        for proc, _, _ in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for module, (proc, _, log_path) in procs.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail(f"{module} did not stop:\n{log_path.read_text()[-3000:]}")


async def test_a_transaction_rerun_after_its_connection_was_killed_is_counted(db_url: str) -> None:
    settings = make_settings(db_url)
    engine = create_engine(settings, "tests", pool_size=2)
    killer = create_engine(settings, "tests", pool_size=1)
    postgres = engine.dialect.name == "postgresql"
    attempts = 0

    async def work(session):  # type: ignore[no-untyped-def]
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            # This transaction's connection dies under it, as in a fail-over.
            own = await session.scalar(
                sa.text("SELECT pg_backend_pid()" if postgres else "SELECT CONNECTION_ID()")
            )
            async with killer.connect() as conn:
                if postgres:
                    await conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": own})
                else:
                    await conn.execute(sa.text(f"KILL CONNECTION {int(own)}"))
            await asyncio.sleep(0.2)
        return await session.scalar(sa.text("SELECT 1"))

    def retries() -> float:
        samples = families(metrics.render().decode())["rpa_db_retries"]
        return sum(s.value for s in samples if s.name == "rpa_db_retries_total")

    before = retries()
    try:
        assert await run_in_transaction(session_factory(engine), work, base_delay_s=0.01) == 1
    finally:
        await engine.dispose()
        await killer.dispose()
    assert attempts == 2
    assert retries() == before + 1
    [sample] = [
        s
        for s in families(metrics.render().decode())["rpa_db_retries"]
        if s.name == "rpa_db_retries_total" and s.value >= 1
    ][-1:]
    assert sample.labels["reason"]  # named: connection_failure, CR_SERVER_LOST...


async def test_a_nats_connection_lost_and_regained_is_counted(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats.log")
    server.start()
    service = f"metrics-{uuid.uuid4().hex[:6]}"
    nc = await connect(server.url, f"rpa-{service}")
    try:

        def count(family: str) -> float:
            samples = families(metrics.render().decode())[family]
            return value(samples, f"{family}_total", service=service) or 0.0

        assert count("rpa_nats_disconnects") == 0 and count("rpa_nats_reconnects") == 0
        server.stop()
        deadline = time.monotonic() + 30
        while nc.is_connected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        server.start()
        while not (nc.is_connected and count("rpa_nats_reconnects") >= 1) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert count("rpa_nats_disconnects") >= 1
        assert count("rpa_nats_reconnects") == 1
    finally:
        await nc.close()
        server.stop()
