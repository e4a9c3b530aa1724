"""What every service shares: its context (settings, engine, NATS), health, problem+json errors."""

from __future__ import annotations

import functools
import gc
import hmac
import os
import re
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

from rpa_common import metrics
from rpa_common.db.engine import ProcessName, create_engine, session_factory
from rpa_common.db.uow import is_unavailable, run_in_transaction
from rpa_common.errors import PROBLEM_JSON, DomainError, ServiceUnavailable, Unprocessable
from rpa_common.nats.client import connect
from rpa_common.nats.publisher import Publisher
from rpa_common.settings import Settings
from rpa_common.text import find_bad_json_text

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
    publisher: Publisher = field(init=False)
    # When each dependency of /readyz last answered (monotonic seconds); see ``check_ready``.
    answered_at: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.publisher = Publisher(self.nc)

    @functools.cached_property
    def read_sessions(self) -> async_sessionmaker[AsyncSession]:
        """Sessions for work that only reads. On PostgreSQL they run without BEGIN and COMMIT (each
        statement commits on its own): two round trips less per unit of work, and no consistency
        lost, since READ COMMITTED takes a new snapshot for every statement anyway. On MariaDB,
        switching a connection to autocommit and back costs round trips of its own: plain sessions."""
        if self.engine.dialect.name != "postgresql":
            return self.sessions
        return session_factory(self.engine.execution_options(isolation_level="AUTOCOMMIT"))

    async def publish(self, subject: str, payload: bytes) -> None:
        """Publish after commit. Never raises: NATS is a hint, the database is the truth; a
        message NATS cannot take now is logged at warning and retried (``Publisher``)."""
        await self.publisher.publish(subject, payload)


CREDENTIAL_SERVICES: frozenset[str] = frozenset({"api", "gateway"})
"""Services that encrypt or decrypt credential passwords: they prove their master keys at start."""


@asynccontextmanager
async def service_context(settings: Settings, name: ProcessName) -> AsyncIterator[ServiceContext]:
    metrics.set_service(name)
    async with AsyncExitStack() as stack:
        stack.callback(metrics.process_exiting)
        engine = create_engine(settings, name)
        stack.push_async_callback(engine.dispose)
        if name in CREDENTIAL_SERVICES:
            # A wrong or missing credentials master key stops the service here, loudly (MasterKeyError).
            from rpa_common.credentials import check_at_start

            await check_at_start(settings, session_factory(engine))
        nc = await connect(settings.nats_url, f"rpa-{name}", *settings.nats_credentials())

        async def _drain() -> None:
            try:
                await nc.drain()
            except Exception as exc:
                log.info("nats.drain_skipped", error=str(exc))

        stack.push_async_callback(_drain)
        ctx = ServiceContext(
            name=name, settings=settings, engine=engine, sessions=session_factory(engine), nc=nc, stack=stack
        )
        stack.push_async_callback(ctx.publisher.close)  # before the drain: held messages go first
        yield ctx


READY_DEADLINE_S = 2.0
"""A readiness probe answers within this, database retries included."""


async def check_ready(ctx: ServiceContext) -> dict[str, str]:
    """Each dependency's state: ``ok``, ``degraded: ...`` (away, within ``RPA_READY_GRACE_S`` of its
    last answer: still ready) or what is wrong.

    The database and NATS are shared by every replica: when they fail over, all replicas lose them
    at once, and a balancer that took every replica out would only swap the services' own 503 with
    ``Retry-After`` for its bare 503, cut every robot's connection, and add its ``rise`` checks to
    the recovery. So a dependency that answered before is reported ``degraded`` (ready) for the
    grace period; a replica that cannot reach it for longer, or never could, is not ready."""
    checks: dict[str, str] = {}

    async def ping(session: AsyncSession) -> None:
        await session.execute(text("SELECT 1"))

    try:
        # Through the unit of work like every other access: a fail-over blip is retried, not reported.
        await run_in_transaction(
            ctx.sessions, ping, attempts=ctx.settings.db_retry_attempts, deadline_s=READY_DEADLINE_S
        )
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    checks["nats"] = "ok" if ctx.nc.is_connected else "error: not connected"
    now = time.monotonic()
    for name, state in checks.items():
        if state == "ok":
            ctx.answered_at[name] = now
            continue
        last = ctx.answered_at.get(name)
        if last is not None and now - last < ctx.settings.ready_grace_s:
            checks[name] = f"degraded: {state.removeprefix('error: ')} for {now - last:.0f} s"
    return checks


def is_ready(checks: dict[str, str]) -> bool:
    return all(v == "ok" or v.startswith("degraded") for v in checks.values())


def health_router(get_ctx: Callable[[Request], ServiceContext]) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="Database and NATS answer (else 503)")
    async def readyz(request: Request) -> JSONResponse:
        checks = await check_ready(get_ctx(request))
        ok = is_ready(checks)
        status = "unavailable" if not ok else "ok" if all(v == "ok" for v in checks.values()) else "degraded"
        return JSONResponse(
            {"status": status, "checks": checks},
            status_code=200 if ok else 503,
            headers=None if ok else {"Retry-After": str(RETRY_AFTER_S)},
        )

    return router


def metrics_router(settings: Settings) -> APIRouter:
    """``GET /metrics``: Prometheus text format, from ``rpa_common.metrics``. Behind a bearer token
    when ``RPA_METRICS_TOKEN`` is set. Not in the OpenAPI document: it is for Prometheus."""
    router = APIRouter(tags=["health"])
    token = settings.metrics_token.get_secret_value().encode() if settings.metrics_token else None

    @router.get("/metrics", include_in_schema=False)
    async def metrics_endpoint(request: Request) -> Response:
        if token is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
                answer = problem(
                    401,
                    "Unauthorized",
                    "/metrics needs 'Authorization: Bearer <RPA_METRICS_TOKEN>'",
                    instance="/metrics",
                )
                answer.headers["WWW-Authenticate"] = "Bearer"
                return answer
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    return router


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"
"""The ``route`` label of a request no route took (404, or refused before routing: 413, 415)."""


_CONVERTOR = re.compile(r"\{([^}:]+):[^}]*\}")


def route_template(scope: Scope) -> str:
    """The template of the route that answered (``/api/v1/jobs/{job_id}``), after the app ran.

    FastAPI keeps an included router's routes as they were declared (``scope["route"]`` is then
    ``/jobs/{job_id}``, without the include's prefix) and records the whole template in its
    effective route context; other routes (Starlette's, the app's own) carry it in ``scope["route"]``.
    tests/test_metrics.py checks a prefixed route, so a FastAPI that moves this fails loudly."""
    effective = (scope.get("fastapi") or {}).get("effective_route_context")
    path = getattr(effective, "path", None)
    if not isinstance(path, str) or not path:
        path = getattr(scope.get("route"), "path", None)
    if not isinstance(path, str) or not path:
        return UNMATCHED_ROUTE
    return _CONVERTOR.sub(r"{\1}", path)  # "{job_id}", not "{job_id:uuid}"


class HttpMetrics:
    """Counts HTTP requests and times them (``rpa_http_requests``, ``rpa_http_request_duration_seconds``),
    labelled by the route template the router matched (``/api/v1/jobs/{job_id}``), never the raw
    path, so the number of series stays bounded whatever clients ask for.

    The outermost layer: it sees the final status, 503s and 500s of ``RequestLog`` included. The
    label children are cached per (method, route, status): a request costs two dictionary lookups,
    an increment and an observation."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            template = route_template(scope)
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            key = (method, template, status)
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = metrics.HTTP_REQUESTS.labels(
                    self.service, method, template, str(status)
                )
            timer = self._timers.get(key[:2])
            if timer is None:
                timer = self._timers[key[:2]] = metrics.HTTP_LATENCY.labels(self.service, method, template)
            counter.inc()
            timer.observe(time.perf_counter() - started)


def install_metrics(app: FastAPI, service: str, settings: Settings) -> None:
    """``/metrics`` and the HTTP request metrics for ``app`` (call after its other middleware, so
    this one is outermost)."""
    app.add_middleware(HttpMetrics, service=service)
    app.include_router(metrics_router(settings))


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
        body = exc.to_problem(request.url.path)
        headers = None
        if isinstance(exc, ServiceUnavailable):
            headers = {"Retry-After": str(exc.retry_after_s)}
            body["request_id"] = request_id_of(request.scope)
        elif exc.status == 429 and isinstance(retry := getattr(exc, "retry_after_s", None), int):
            headers = {"Retry-After": str(retry)}  # rate limits, the login throttle
        return JSONResponse(body, status_code=exc.status, media_type=PROBLEM_JSON, headers=headers)

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
        cause = exc.__cause__
        if (
            exc.status_code == 400
            and isinstance(cause, UnicodeDecodeError)
            and isinstance(cause.object, bytes)
        ):
            # FastAPI could not decode a JSON body: name the string that is not UTF-8, as for a NUL.
            found = find_bad_json_text(cause.object)
            field, reason = found or ("body", "must be valid UTF-8")
            return await _domain(request, Unprocessable(f"{field}: {reason}", field=field))
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
        declared = headers.get(b"content-length")
        if (declared is None or declared == b"0") and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body: nothing to count (most requests)
            return
        ctype = headers.get(b"content-type", b"").decode("latin-1")
        limit = self.limit_for(scope["path"], ctype)
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


RETRY_AFTER_S = 1
"""``Retry-After`` of a 503 for a database that could not be reached: fail-overs take seconds."""

_REQUEST_ID = "request_id"
_QUIET_PATHS = frozenset({"/healthz", "/readyz"})
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id_of(scope: Scope) -> str | None:
    """The id ``RequestLog`` gave this request (also in the ``X-Request-ID`` response header)."""
    state = scope.get("state") or {}
    value = state.get(_REQUEST_ID)
    return value if isinstance(value, str) else None


class RequestLog:
    """The outermost layer of a service's HTTP requests: a request id (``X-Request-ID``, kept if the
    client gave a sane one), one structured log line per request, and the last word on errors.

    An exception that nothing else handled never leaves as a bare 500 text: a database that cannot
    serve now (``is_unavailable``) answers 503 problem+json with ``Retry-After``; anything else 500
    problem+json; both carry the request id, and the exception is logged with it.
    """

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service
        self.log = structlog.get_logger("access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value
                break
        given_id = given.decode("latin-1")
        request_id = given_id if _SAFE_REQUEST_ID.fullmatch(given_id) else uuid.uuid4().hex
        scope.setdefault("state", {})[_REQUEST_ID] = request_id
        id_header = (b"x-request-id", request_id.encode())
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if is_unavailable(exc):
                self.log.warning("http.database_unavailable", error=type(exc).__name__, request_id=request_id)
                answer = problem(
                    503,
                    "Service unavailable",
                    "the database cannot be reached right now; try again shortly",
                    instance=scope["path"],
                    request_id=request_id,
                )
                answer.headers["Retry-After"] = str(RETRY_AFTER_S)
            else:
                self.log.exception("http.unhandled_error", request_id=request_id, path=scope["path"])
                answer = problem(
                    500,
                    "Internal server error",
                    f"an unexpected error occurred; quote request id {request_id} when reporting it",
                    instance=scope["path"],
                    request_id=request_id,
                )
            if response_started:
                raise  # too late for an answer: the server closes the connection
            await answer(scope, receive, send_with_id)
        finally:
            if scope["path"] not in _QUIET_PATHS:
                self.log.info(
                    "http.request",
                    service=self.service,
                    method=scope["method"],
                    path=scope["path"],  # never the query string: it may carry a secret by mistake
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    request_id=request_id,
                )


def run_service(
    app: FastAPI | str,
    host: str,
    port: int,
    log_level: str = "info",
    *,
    workers: int = 1,
    **uvicorn_options: Any,
) -> None:
    """Run under uvicorn; SIGTERM/SIGINT shut the lifespan down (drain NATS, close the pool).

    ``workers`` > 1 runs that many processes on the same port (uvicorn's supervisor restarts one that
    dies); ``app`` is then an import string of an app factory (``"pkg.module:create_app"``), since
    each process builds its own app, with its own pool and NATS connection. ``uvicorn_options`` are a
    service's own server options (the gateway's WebSocket settings).
    """
    import uvicorn

    several = isinstance(app, str) and workers > 1
    # Several processes answer on one port and a scrape reaches any one of them: each writes its
    # metrics to files in a directory they share, and /metrics adds them all up (prometheus-client's
    # multiprocess mode). The workers are spawned, so they inherit the variable set here.
    multiproc = metrics.prepare_multiprocess_dir() if several else None
    try:
        uvicorn.run(
            app,
            factory=isinstance(app, str),
            workers=workers if isinstance(app, str) else None,
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
    finally:
        if multiproc is not None and multiproc[1]:
            metrics.remove_multiprocess_dir(multiproc[0])


# Young objects allocated between two collections of the youngest generation (CPython: 700). A log
# frame makes a dozen objects a line, kept until its batch commits; a week of statistics by the hour
# is thousands of rows. At the default, collections ran every few frames or rows and walked all of
# them again: a third of the gateway's CPU per line (bench/logs.py), more than half of a 7-day
# statistics call's (bench/stats.py). Collections still run, less often; cycles are still freed.
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Fewer, larger young collections, and the modules loaded at start out of every collection.

    Called once in each service process, after its imports and before it serves."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def cpu_cores() -> int:
    """Cores this process may run on (its CPU affinity: what a container's cpuset allows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - platforms without affinity
        return os.cpu_count() or 1
