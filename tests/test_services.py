"""Each service runs alone as a process: health, readiness, structured logs, graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import NATS_URL, ROOT
from tests.support import free_port

SERVICES = [
    ("rpa_api", "RPA_API_PORT"),
    ("rpa_gateway", "RPA_GATEWAY_PORT"),
    ("rpa_scheduler", "RPA_SCHEDULER_PORT"),
    ("rpa_coordinator", "RPA_COORDINATOR_PORT"),
]


def service_env(db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPA_")}
    env.update(
        {"RPA_DB_URL": db_url, "RPA_NATS_URL": NATS_URL, "RPA_ENVIRONMENT": "test", "RPA_LOG_JSON": "true"}
    )
    env.update(extra)
    return env


def robot_key(db_url: str, role: str = "coordinator") -> str:
    """A robot of ``role`` in a fresh account of the test database; its key."""
    import asyncio
    import uuid

    from rpa_common.db.engine import create_engine, session_factory
    from rpa_common.db.uow import run_in_transaction
    from rpa_common.models import Account, Robot
    from rpa_common.models.enums import RobotRole
    from rpa_common.security import make_key
    from tests.conftest import make_settings

    key = make_key("rbk")

    async def run() -> None:
        engine = create_engine(make_settings(db_url), "tests", pool_size=1)
        try:

            async def work(session):  # type: ignore[no-untyped-def]
                account = Account(id=uuid.uuid4(), name=f"{role}-{uuid.uuid4().hex[:8]}")
                session.add(account)
                await session.flush()
                session.add(
                    Robot(
                        id=uuid.uuid4(),
                        account_id=account.id,
                        name=role,
                        role=RobotRole(role),
                        key_prefix=key.prefix,
                        key_hash=key.hash,
                    )
                )

            await run_in_transaction(session_factory(engine), work)
        finally:
            await engine.dispose()

    asyncio.run(run())
    return key.full


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"service exited with {proc.returncode}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200:
                return r
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready in {timeout}s: {last}")


@pytest.mark.parametrize(("module", "port_var"), SERVICES)
def test_service_starts_answers_and_stops_gracefully(
    module: str, port_var: str, db_url: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    try:
        __import__(f"{module}.__main__")
    except ImportError as exc:
        pytest.fail(f"{module} has no entry point: {exc}")
    port = free_port()
    extra = {port_var: str(port)}
    if module == "rpa_coordinator":
        extra["RPA_COORDINATOR_KEY"] = robot_key(db_url)
    ready_timeout = 30.0
    if module == "rpa_api":
        # The API runs one worker process per core: test that path whatever this machine has. Each
        # worker starts the app by itself (uvicorn spawns them), hence the longer wait.
        extra["RPA_API_WORKERS"] = "2"
        ready_timeout = 60.0
    log_path = tmp_path / "service.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "serve"],
            cwd=ROOT,
            env=service_env(db_url, **extra),
            stdout=log,
            stderr=log,
        )
        try:
            assert (
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
                if wait_ready(f"http://127.0.0.1:{port}/readyz", proc, timeout=ready_timeout)
                else False
            )
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
            assert ready["checks"]["database"] == "ok" and ready["checks"]["nats"] == "ok"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
    output = log_path.read_text()
    # uvicorn re-raises SIGTERM once its graceful shutdown has completed.
    assert code in (0, -signal.SIGTERM), f"{module} did not stop cleanly ({code}):\n{output[-3000:]}"
    assert "Application shutdown complete" in output, output[-3000:]
    if module == "rpa_api":
        assert output.count("Application shutdown complete") == 2, output[-3000:]  # both workers
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, f"{module} wrote no log line"
    for line in lines:
        json.loads(line)  # every line is a JSON object, uvicorn's included
