"""The robot gateway application: the WebSocket door ``/robot/v1``, package downloads, health."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.exc import SQLAlchemyError

from rpa_common.errors import DomainError, Forbidden, NotFound, Unauthorized
from rpa_common.logging import configure_logging
from rpa_common.models import ProcessVersion
from rpa_common.packages import stream_package
from rpa_common.service import (
    RequestLog,
    ServiceContext,
    health_router,
    install_metrics,
    install_problem_handlers,
    problem,
    service_context,
)
from rpa_common.settings import Settings, get_settings
from rpa_gateway import screenshots, store
from rpa_gateway.hub import Hub
from rpa_protocol.codes import CLOSE_FORBIDDEN, CLOSE_RESTART, CLOSE_UNAUTHORIZED

ROBOT_PATH = "/robot/v1"
RETRY_AFTER_S = 2  # robots come back within about this long after the database does


class DatabaseUnavailable(Exception):
    """The robot's key could not be checked because the database does not answer: retry later."""


def _unavailable(instance: str) -> JSONResponse:
    response = problem(
        503,
        "Service unavailable",
        "the gateway cannot reach its database; retry later",
        instance=instance,
        retryable=True,
    )
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


class _DenialIsNotAnError(logging.Filter):
    """uvicorn's websockets-sansio protocol logs "returned without completing handshake" (level
    error) after a denial response it did send; every path of ``robot_socket`` accepts or denies,
    so here that line only ever follows a deliberate 401/403."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing handshake" not in record.getMessage()


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def _robot_from(ctx: ServiceContext, authorization: str | None) -> store.RobotIdentity:
    """The active robot owning the Bearer key, else 401 (no or wrong key) / 403 (inactive)."""
    key = _bearer(authorization)
    if key is None:
        raise Unauthorized("a robot key is required: 'Authorization: Bearer rbk_...'")
    try:
        robot = await store.authenticate(ctx.sessions, key)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        raise DatabaseUnavailable(type(exc).__name__) from exc
    if robot is None:
        raise Unauthorized("the robot key is not valid")
    if not robot.is_active:
        raise Forbidden("the robot is inactive")
    return robot


def create_app(settings: Settings | None = None, ctx: ServiceContext | None = None) -> FastAPI:
    settings = settings or (ctx.settings if ctx else get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if ctx is None:
            configure_logging(settings.log_level, settings.log_json)
        async with service_context(settings, "gateway") if ctx is None else _given(ctx) as own:
            hub = Hub(own)
            app.state.ctx = own
            app.state.hub = hub
            await hub.start()
            try:
                yield
            finally:
                await hub.stop()

    app = FastAPI(
        title="RPA Robot Gateway",
        version="1.0.0",
        description="The robots' door: protocol v1 over WebSocket (docs/robot-protocol.md).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    install_problem_handlers(app)
    app.add_middleware(RequestLog, service="gateway")
    install_metrics(app, "gateway", settings)
    uvicorn_error = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DenialIsNotAnError) for f in uvicorn_error.filters):
        uvicorn_error.addFilter(_DenialIsNotAnError())

    def _ctx(request: Request) -> ServiceContext:
        c: ServiceContext = request.app.state.ctx
        return c

    app.include_router(health_router(_ctx))

    @app.exception_handler(DatabaseUnavailable)
    async def _db_down(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        return _unavailable(request.url.path)

    @app.websocket(ROBOT_PATH)
    async def robot_socket(ws: WebSocket) -> None:
        # The key travels in the upgrade request's header, never in the URL; a refused robot gets
        # a plain HTTP 401/403 before any WebSocket exists.
        own: ServiceContext = ws.app.state.ctx
        hub: Hub = ws.app.state.hub
        denial_possible = "websocket.http.response" in ws.scope.get("extensions", {})
        try:
            robot = await _robot_from(own, ws.headers.get("authorization"))
            robot = dataclasses.replace(
                robot,
                client_address=ws.client.host if ws.client else None,
                user_agent=(ws.headers.get("user-agent") or "")[:500] or None,
            )
        except DatabaseUnavailable:
            # Not the robot's fault and not a server bug: a 503 the robot retries after a while.
            if denial_possible:
                await ws.send_denial_response(_unavailable(ROBOT_PATH))
            else:
                await ws.accept()
                await ws.close(CLOSE_RESTART, "database unavailable")
            return
        except DomainError as exc:
            if denial_possible:
                await ws.send_denial_response(problem(exc.status, exc.title, exc.detail, instance=ROBOT_PATH))
            else:  # a server without denial responses: accept, then close with the 44xx twin
                await ws.accept()
                await ws.close(CLOSE_FORBIDDEN if exc.status == 403 else CLOSE_UNAUTHORIZED, exc.detail)
            return
        await ws.accept()
        await hub.serve(ws, robot)

    @app.get(
        f"{ROBOT_PATH}/packages/{{version_id}}",
        summary="Download a process package (robot key; only versions of the robot's active jobs)",
        response_class=StreamingResponse,
    )
    async def download_package(version_id: uuid.UUID, request: Request) -> StreamingResponse:
        own: ServiceContext = request.app.state.ctx
        robot = await _robot_from(own, request.headers.get("authorization"))
        try:
            async with own.sessions() as session:
                size = await store.may_download(session, robot.id, version_id)
                version = await session.get(ProcessVersion, version_id) if size is not None else None
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise DatabaseUnavailable(type(exc).__name__) from exc
        if size is None or version is None:
            raise NotFound.of("package", version_id)
        return StreamingResponse(
            stream_package(own.sessions, version_id),
            media_type="application/zip",
            headers={
                "Content-Length": str(size),
                "X-Content-SHA256": version.sha256,
                "Cache-Control": "no-store",
            },
        )

    screenshots.install(app, _robot_from)
    return app


@asynccontextmanager
async def _given(ctx: ServiceContext) -> AsyncIterator[ServiceContext]:
    yield ctx
