"""Shared fixtures: real PostgreSQL, real MariaDB and real NATS, a fresh database per backend.

Every test that takes ``ctx`` (or anything built on it) runs once per database backend. Each test
gets its own account (``tenant``), so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from rpa_common.db.admin import create_database, drop_database
from rpa_common.db.engine import create_engine, session_factory
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import User, UserRole
from rpa_common.nats.client import connect
from rpa_common.security import hash_password, issue_access_token
from rpa_common.service import ServiceContext
from rpa_common.settings import Settings
from tests.license_keys import PUBLIC_KEY as LICENSE_PUBLIC_KEY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BLOB_DIR = os.path.join(tempfile.gettempdir(), f"rpa-test-blobs-{os.getpid()}")
"""The blob directory of this test session's settings (screenshots); gateways under test share it."""
PASSWORD = "correct horse battery staple"


def _answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


PG_URL = os.environ.get("RPA_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
MARIADB_URL = os.environ.get("RPA_TEST_MARIADB_URL", "mariadb://root@127.0.0.1:3306/test")
NATS_URL = os.environ.get("RPA_TEST_NATS_URL", "nats://127.0.0.1:4222")

BACKENDS = ["postgresql", "mariadb"]


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def alembic_config(url: str) -> Config:
    cfg = Config(os.path.join(ROOT, "alembic.ini"))
    cfg.set_main_option("script_location", os.path.join(ROOT, "migrations"))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logger"] = False
    return cfg


async def migrate(url: str, target: str = "head") -> None:
    # env.py runs its own event loop: run it in a thread.
    await asyncio.to_thread(command.upgrade, alembic_config(url), target)


def admin_url_for(backend: str) -> str:
    return PG_URL if backend == "postgresql" else MARIADB_URL


def require_backend(backend: str) -> None:
    url = admin_url_for(backend)
    if not _answers(url, 5432 if backend == "postgresql" else 3306):
        msg = f"!!! {backend} does not answer at {url}: {backend} tests SKIPPED !!!"
        if IN_CI:
            pytest.fail(f"{msg} (CI must never skip a database)")
        pytest.skip(msg)


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    require_backend(request.param)
    return str(request.param)


@pytest.fixture(scope="session")
async def db_url(backend: str) -> AsyncIterator[str]:
    """A database built from the migrations, for this whole test session, on ``backend``."""
    name = f"rpa_t_{backend[:2]}_{os.getpid()}"
    admin = admin_url_for(backend)
    await create_database(admin, name)
    url = _with_db(admin, name)
    await migrate(url)
    yield url
    await drop_database(admin, name)


def make_settings(db_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "environment": "test",
        "db_url": db_url,
        "nats_url": NATS_URL,
        "db_pool_size": 5,
        "log_json": False,
        "login_lockout_s": 1,
        # Off in tests (they make many calls from one address); tests/api/test_ratelimit.py turns them on.
        "rate_limit_per_minute": 0,
        "rate_limit_anonymous_per_minute": 0,
        "blob_dir": BLOB_DIR,
        "license_public_keys": LICENSE_PUBLIC_KEY,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def settings(db_url: str) -> Settings:
    return make_settings(db_url)


@pytest.fixture(scope="session")
async def ctx(settings: Settings) -> AsyncIterator[ServiceContext]:
    engine = create_engine(settings, "tests")
    nc = await connect(settings.nats_url, "rpa-tests")
    context = ServiceContext(
        name="tests", settings=settings, engine=engine, sessions=session_factory(engine), nc=nc
    )
    yield context
    await nc.drain()
    await engine.dispose()


@pytest.fixture(scope="session")
def app(ctx: ServiceContext):  # type: ignore[no-untyped-def]
    from rpa_api.app import create_app

    return create_app(ctx=ctx)


@pytest.fixture
async def client(app) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
        yield c


@dataclass
class Tenant:
    """An account of its own with its admin, for one test."""

    account_id: uuid.UUID
    account_name: str
    admin_id: uuid.UUID
    admin_username: str
    token: str
    client: httpx.AsyncClient
    ctx: ServiceContext

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def folder_user(
        self, role_name: str, permissions: list[dict[str, str]], folder_id: str
    ) -> dict[str, str]:
        """Auth headers of a new user whose only role (``role_name``, made here through the API) gives
        ``permissions`` in folder ``folder_id`` alone."""
        role = await self.client.post(
            "/api/v1/roles",
            json={
                "name": role_name,
                "permissions": permissions,
                "all_folders": False,
                "folder_ids": [folder_id],
            },
            headers=self.headers,
        )
        assert role.status_code == 201, role.text
        user_id, _, headers = await self.user("Viewer")
        r = await self.client.put(
            f"/api/v1/users/{user_id}/roles", json={"role_ids": [role.json()["id"]]}, headers=self.headers
        )
        assert r.status_code == 200
        return headers

    async def user(self, role: str, username: str | None = None) -> tuple[uuid.UUID, str, dict[str, str]]:
        """A user holding the built-in ``role``: (id, username, auth headers)."""
        from rpa_api.roles.builtin import ensure_builtin_roles

        username = username or f"{role.lower()}-{uuid.uuid4().hex[:10]}"

        async def work(session):  # type: ignore[no-untyped-def]
            roles = await ensure_builtin_roles(session, self.account_id)
            user = User(
                id=uuid.uuid4(),
                account_id=self.account_id,
                username=username,
                password_hash=hash_password(PASSWORD),
            )
            session.add(user)
            await session.flush()
            session.add(UserRole(user_id=user.id, role_id=roles[role].id))
            return user

        user = await run_in_transaction(self.ctx.sessions, work)
        token = issue_access_token(
            self.ctx.settings, user_id=user.id, account_id=self.account_id, token_version=0
        )
        return user.id, username, {"Authorization": f"Bearer {token}"}


async def new_tenant(ctx: ServiceContext, client: httpx.AsyncClient) -> Tenant:
    from rpa_api.bootstrap import bootstrap

    name = f"acc-{uuid.uuid4().hex[:12]}"
    username = f"admin-{uuid.uuid4().hex[:12]}"
    account, _ = await run_in_transaction(ctx.sessions, lambda s: bootstrap(s, name, username, PASSWORD))
    async with ctx.sessions() as session:
        admin = (await session.execute(sa.select(User).where(User.username == username))).scalar_one()
    token = issue_access_token(ctx.settings, user_id=admin.id, account_id=account.id, token_version=0)
    return Tenant(account.id, name, admin.id, username, token, client, ctx)


@pytest.fixture
async def tenant(ctx: ServiceContext, client: httpx.AsyncClient) -> Tenant:
    return await new_tenant(ctx, client)


@pytest.fixture
async def other_tenant(ctx: ServiceContext, client: httpx.AsyncClient) -> Tenant:
    return await new_tenant(ctx, client)


@pytest.fixture(scope="session", autouse=True)
def _loud_backend_report() -> Iterator[None]:
    yield


# The closing lines say which databases the run exercised (CI must show both).
_BACKEND_OUTCOMES: dict[str, dict[str, int]] = {b: {} for b in BACKENDS}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
        return
    params = report.nodeid.rsplit("[", 1)[-1] if "[" in report.nodeid else ""
    for backend in BACKENDS:
        if backend in params.replace("]", "").split("-"):
            counts = _BACKEND_OUTCOMES[backend]
            counts[report.outcome] = counts.get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.section("database backends exercised")
    for backend, counts in _BACKEND_OUTCOMES.items():
        summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "none"
        terminalreporter.write_line(f"{backend}: {summary}")
