"""The coordinator process: health endpoints, and the sessions of its terminal server in the background."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request

from rpa_common.logging import configure_logging
from rpa_common.service import ServiceContext, health_router, install_problem_handlers, service_context
from rpa_common.settings import Settings
from rpa_coordinator.coordinator import Coordinator, resolve_identity
from rpa_coordinator.drivers import ProcessDriver, SessionDriver

log = structlog.get_logger(__name__)


def make_driver(settings: Settings) -> SessionDriver:
    if settings.coordinator_driver == "process":
        return ProcessDriver(settings.coordinator_work_dir)
    raise ValueError(f"unknown session driver {settings.coordinator_driver!r}")  # pragma: no cover


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, settings.log_json)
        async with service_context(settings, "coordinator") as ctx:
            app.state.ctx = ctx
            coordinator: Coordinator | None = None
            key = settings.coordinator_key.get_secret_value() if settings.coordinator_key else ""
            if key:
                robot_id, _ = await resolve_identity(ctx, key)
                coordinator = Coordinator(ctx, robot_id, make_driver(settings))
                await coordinator.start()
            elif settings.coordinator_require_key:
                raise RuntimeError(
                    "RPA_COORDINATOR_KEY is not set (or set RPA_COORDINATOR_REQUIRE_KEY=false)"
                )
            else:
                log.warning("coordinator.no_key", detail="serving health checks only, no sessions")
            try:
                yield
            finally:
                if coordinator is not None:
                    await coordinator.stop()

    app = FastAPI(title="RPA Orchestrator coordinator", version="1.0.0", lifespan=lifespan, docs_url=None)
    install_problem_handlers(app)

    def _ctx(request: Request) -> ServiceContext:
        c: ServiceContext = request.app.state.ctx
        return c

    app.include_router(health_router(_ctx))
    return app
