"""API rate limits: one limit shared by two real API processes, 429 problem+json with a sane
Retry-After, health endpoints exempt, and the deliberate fail-open (per replica) when the database
is out of reach."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest

from rpa_api.ratelimit import WINDOW_S, RateLimited, RateLimiter
from rpa_common.db.engine import create_engine, session_factory
from rpa_common.service import ServiceContext
from tests.api.conftest import LiveAPI
from tests.conftest import make_settings

PER_KEY = 30
ANONYMOUS = 20


@pytest.fixture(scope="module")
def two_apis(
    db_url: str, ctx: ServiceContext, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[LiveAPI]]:
    env = {"RPA_RATE_LIMIT_PER_MINUTE": str(PER_KEY), "RPA_RATE_LIMIT_ANONYMOUS_PER_MINUTE": str(ANONYMOUS)}
    apis: list[LiveAPI] = []
    try:
        for i in range(2):
            apis.append(LiveAPI(db_url, tmp_path_factory.mktemp(f"rl-{i}") / "api.log", ctx, extra_env=env))
        yield apis
    finally:
        for api in apis:
            api.stop()


async def _fresh_window() -> None:
    """Start well inside a window, so that the calls of a test all fall in one."""
    into = time.time() % WINDOW_S
    if into > WINDOW_S - 20:
        await asyncio.sleep(WINDOW_S - into + 0.5)


def _assert_429(resp: httpx.Response) -> None:
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["status"] == 429
    retry_after = int(resp.headers["Retry-After"])
    left = WINDOW_S - time.time() % WINDOW_S
    assert 1 <= retry_after <= WINDOW_S and abs(retry_after - left) <= 2, (retry_after, left)


async def test_per_key_limit_is_shared_by_two_api_processes(two_apis: list[LiveAPI]) -> None:
    await _fresh_window()
    admin = await two_apis[0].new_admin()
    statuses: list[int] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(3 * PER_KEY):
            api = two_apis[i % 2]
            resp = await client.get(f"{api.url}/api/v1/auth/me", headers=admin.headers)
            statuses.append(resp.status_code)
            if resp.status_code == 429:
                _assert_429(resp)
            if i % 5 == 0:
                await asyncio.sleep(0.05)  # let background flushes happen as between real calls
        ok = statuses.count(200)
        # The sum over both processes: at least the limit, at most the documented slack beyond it.
        assert PER_KEY <= ok <= PER_KEY + PER_KEY // 8, statuses
        assert set(statuses) == {200, 429}
        assert statuses[-10:] == [429] * 10
        # Health and readiness are never limited.
        for api in two_apis:
            assert (await client.get(f"{api.url}/readyz")).status_code == 200
        # Another caller (a new account's admin) has its own budget.
        other = await two_apis[1].new_admin()
        assert (
            await client.get(f"{two_apis[1].url}/api/v1/auth/me", headers=other.headers)
        ).status_code == 200


async def test_anonymous_calls_are_limited_per_address(two_apis: list[LiveAPI]) -> None:
    await _fresh_window()
    statuses: list[int] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(2 * ANONYMOUS):
            resp = await client.get(f"{two_apis[i % 2].url}/api/v1/processes")
            statuses.append(resp.status_code)
            if resp.status_code == 429:
                _assert_429(resp)
        # Anonymous calls (and the token endpoint, by address) share one budget per address: the
        # admin logins of the other test in this window may have spent some of it.
        assert 0 < statuses.count(401) <= ANONYMOUS + ANONYMOUS // 8, statuses
        assert statuses[-5:] == [429] * 5
        # The token endpoint counts by address too, whatever the credentials.
        resp = await client.post(
            f"{two_apis[0].url}/api/v1/auth/token",
            data={"username": f"u-{uuid.uuid4().hex}", "password": "x"},
        )
        assert resp.status_code == 429


async def test_fails_open_to_a_per_replica_count_without_the_database() -> None:
    settings = make_settings("postgresql://nobody@127.0.0.1:9/none")
    engine = create_engine(settings, "api")
    try:
        ctx = cast(Any, SimpleNamespace(sessions=session_factory(engine), settings=settings))
        limiter = RateLimiter(flush_s=0.01)
        allowed = 0
        with pytest.raises(RateLimited) as refused:
            for _ in range(20):
                await limiter.hit(ctx, "k:test", 5)
                allowed += 1
        # Deliberate: the database out of reach does not refuse every call (fail open), but this
        # replica still holds the caller to the limit on its own count.
        assert allowed == 5
        assert limiter.failing
        assert 1 <= refused.value.retry_after_s <= WINDOW_S
    finally:
        await engine.dispose()
