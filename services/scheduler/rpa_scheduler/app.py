"""The scheduler process: health endpoints, and the dispatcher, sweeps and triggers in the background."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from rpa_common.logging import configure_logging
from rpa_common.service import (
    ServiceContext,
    health_router,
    install_metrics,
    install_problem_handlers,
    service_context,
)
from rpa_common.settings import Settings, get_settings
from rpa_scheduler.service import Scheduler


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, settings.log_json)
        async with service_context(settings, "scheduler") as ctx:
            app.state.ctx = ctx
            scheduler = Scheduler(ctx)
            await scheduler.start()
            try:
                yield
            finally:
                await scheduler.stop()

    app = FastAPI(title="RPA Orchestrator scheduler", version="1.0.0", lifespan=lifespan, docs_url=None)
    install_problem_handlers(app)
    install_metrics(app, "scheduler", settings)

    def _ctx(request: Request) -> ServiceContext:
        c: ServiceContext = request.app.state.ctx
        return c

    app.include_router(health_router(_ctx))
    return app
