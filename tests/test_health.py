"""Health endpoints answer what a load balancer needs."""

from __future__ import annotations

import httpx


async def test_healthz_and_readyz(client: httpx.AsyncClient, backend: str) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"database": "ok", "nats": "ok"}


async def test_openapi_and_docs(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    assert r.json()["info"]["title"] == "RPA Orchestrator API"
    r = await client.get("/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()


async def test_protected_endpoint_without_token_is_401_problem(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/robots")
    assert r.status_code in (401, 404)
