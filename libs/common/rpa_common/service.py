"""What every service shares: its context (settings, engine, NATS), health, problem+json errors."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from nats.aio.client import Client as NATS
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rpa_common.db.engine import ProcessName, create_engine, session_factory
from rpa_common.errors import PROBLEM_JSON, DomainError
from rpa_common.nats.client import connect
from rpa_common.settings import Settings

log = structlog.get_logger(__name__)


@dataclass
class ServiceContext:
    """Lifetimes of one service process, held in an ``AsyncExitStack``."""

    name: ProcessName
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    nc: NATS
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    async def publish(self, subject: str, payload: bytes) -> None:
        """Publish after commit. Never raises: NATS is a hint, the database is the truth."""
        try:
            await self.nc.publish(subject, payload)
        except Exception as exc:
            log.warning("nats.publish_failed", subject=subject, error=str(exc))


@asynccontextmanager
async def service_context(settings: Settings, name: ProcessName) -> AsyncIterator[ServiceContext]:
    async with AsyncExitStack() as stack:
        engine = create_engine(settings, name)
        stack.push_async_callback(engine.dispose)
        nc = await connect(settings.nats_url, f"rpa-{name}")

        async def _drain() -> None:
            try:
                await nc.drain()
            except Exception as exc:
                log.info("nats.drain_skipped", error=str(exc))

        stack.push_async_callback(_drain)
        yield ServiceContext(
            name=name, settings=settings, engine=engine, sessions=session_factory(engine), nc=nc, stack=stack
        )


async def check_ready(ctx: ServiceContext) -> dict[str, str]:
    """Each dependency's state: ``ok`` or what is wrong."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            async with ctx.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    checks["nats"] = "ok" if ctx.nc.is_connected else "error: not connected"
    return checks


def health_router(get_ctx: Callable[[Request], ServiceContext]) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="Database and NATS answer (else 503)")
    async def readyz(request: Request) -> JSONResponse:
        checks = await check_ready(get_ctx(request))
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
        )

    return router


def problem(
    status: int, title: str, detail: str, *, instance: str | None = None, **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def _field_of(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form", "cookie")]
    return ".".join(parts) or str(loc[0] if loc else "body")


def install_problem_handlers(app: FastAPI) -> None:
    """Render every client error as RFC 9457 problem+json naming the field."""

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> Response:
        return JSONResponse(exc.to_problem(request.url.path), status_code=exc.status, media_type=PROBLEM_JSON)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = []
        status = 422
        for err in exc.errors():
            loc = err.get("loc", ())
            if err.get("type") == "json_invalid":
                # FastAPI puts the character position where the field goes: name the body instead.
                status = 400
                reason = (err.get("ctx") or {}).get("error", "not valid JSON")
                position = loc[1] if len(loc) > 1 else "?"
                errors.append(
                    {"field": "body", "message": f"{reason} at character {position}", "type": "json_invalid"}
                )
                continue
            errors.append(
                {"field": _field_of(loc), "message": err.get("msg", "invalid"), "type": err.get("type")}
            )
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
        title = "Malformed request body" if status == 400 else "Validation failed"
        return problem(status, title, detail, instance=request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        titles = {404: "Not found", 405: "Method not allowed", 401: "Unauthorized", 403: "Forbidden"}
        resp = problem(
            exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail), instance=request.url.path
        )
        if exc.headers:
            resp.headers.update(exc.headers)
        return resp


class BodySizeLimit:
    """Refuse request bodies over a limit with 413 before reading them all (pure ASGI middleware).

    ``limit_for(path, content_type)`` gives the limit for a request.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        ctype = headers.get(b"content-type", b"").decode("latin-1")
        limit = self.limit_for(scope["path"], ctype)
        declared = headers.get(b"content-length")
        too_large = problem(
            413, "Payload too large", f"request body exceeds {limit} bytes", instance=scope["path"]
        )
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await too_large(scope, receive, send)
            return
        seen = 0
        exceeded = False
        started = False
        answered = False  # the 413 went out; whatever the app says after it is dropped

        async def limited_receive() -> Message:
            nonlocal seen, exceeded, started, answered
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit and not exceeded:
                    exceeded = True
                    # Answer 413 here: the app may catch the exception below and answer it with
                    # a 400 of its own (FastAPI does: "error parsing the body"), which is dropped.
                    if not started:
                        started = answered = True
                        await too_large(scope, receive, send)
                if exceeded:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if answered:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception:
            if exceeded:
                return
            raise


class _BodyTooLarge(Exception):
    pass


class RequestLog:
    """One structured log line per HTTP request, with a request id (``X-Request-ID``, kept if given)."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service
        self.log = structlog.get_logger("access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ("/healthz", "/readyz"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.log.info(
                "http.request",
                service=self.service,
                method=scope["method"],
                path=scope["path"],  # never the query string: it may carry a secret by mistake
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                request_id=request_id,
            )


def run_service(app: FastAPI, host: str, port: int, log_level: str = "info", **uvicorn_options: Any) -> None:
    """Run under uvicorn; SIGTERM/SIGINT shut the lifespan down (drain NATS, close the pool).

    ``uvicorn_options`` are a service's own server options (the gateway's WebSocket settings).
    """
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        log_config=None,  # keep the structured logging the service configured
        proxy_headers=True,
        forwarded_allow_ips="*",
        timeout_graceful_shutdown=20,
        access_log=False,
        **uvicorn_options,
    )
