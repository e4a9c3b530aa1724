"""The API as a real server: ``python -m rpa_api serve`` on a free port, on this session's database.

The contract tests (schemathesis, the generated client, the browser) talk HTTP to it as an outside
client would; each makes its own account (``LiveAPI.new_admin``), so they never see each other's rows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from rpa_common.db.uow import run_in_transaction
from rpa_common.service import ServiceContext
from tests.conftest import NATS_URL, PASSWORD, ROOT
from tests.support import free_port


@dataclass
class Admin:
    """The administrator of a fresh account, logged in through the API."""

    username: str
    password: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class LiveAPI:
    def __init__(
        self, db_url: str, log_path: Path, ctx: ServiceContext, extra_env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.ctx = ctx
        env = {k: v for k, v in os.environ.items() if not k.startswith("RPA_")}
        env.update(
            RPA_DB_URL=db_url,
            RPA_NATS_URL=NATS_URL,
            RPA_ENVIRONMENT="test",
            RPA_API_HOST="127.0.0.1",
            RPA_API_PORT=str(self.port),
            RPA_DB_POOL_SIZE="5",
            RPA_API_WORKERS="1",  # one process: the suite's machine runs many at once
            RPA_LOG_LEVEL="WARNING",
            # Schemathesis and the walkers make many calls from one address: no rate limits unless asked.
            RPA_RATE_LIMIT_PER_MINUTE="0",
            RPA_RATE_LIMIT_ANONYMOUS_PER_MINUTE="0",
        )
        env.update(extra_env or {})
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rpa_api", "serve"], cwd=ROOT, env=env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 60  # a busy CI machine starts Python slowly
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the API exited: {log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the API was not ready in 60 s")
            time.sleep(0.1)

    async def new_admin(self) -> Admin:
        """A new account and its administrator, whose token comes from ``POST /auth/token``."""
        from rpa_api.bootstrap import bootstrap

        name = f"live-{uuid.uuid4().hex[:12]}"
        username = f"admin-{uuid.uuid4().hex[:12]}"
        await run_in_transaction(self.ctx.sessions, lambda s: bootstrap(s, name, username, PASSWORD))
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            resp = await client.post("/api/v1/auth/token", data={"username": username, "password": PASSWORD})
        assert resp.status_code == 200, resp.text
        return Admin(username, PASSWORD, resp.json()["access_token"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="session")
def live_api(db_url: str, ctx: ServiceContext, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveAPI]:
    api = LiveAPI(db_url, tmp_path_factory.mktemp("live-api") / "api.log", ctx)
    try:
        yield api
    finally:
        api.stop()
