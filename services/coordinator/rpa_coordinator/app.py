"""The coordinator process: health endpoints, and the sessions of its terminal server in the background."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import structlog
from fastapi import FastAPI, Request

from rpa_common.logging import configure_logging
from rpa_common.sealing import SealKeyPair, load_or_create_key_pair
from rpa_common.service import (
    ServiceContext,
    health_router,
    install_metrics,
    install_problem_handlers,
    service_context,
)
from rpa_common.settings import Settings
from rpa_coordinator.coordinator import Coordinator, resolve_identity
from rpa_coordinator.door import RobotDoor
from rpa_coordinator.drivers import ProcessDriver, RdpDriver, SessionDriver

log = structlog.get_logger(__name__)


def work_dir(settings: Settings) -> Path:
    return Path(settings.coordinator_work_dir or os.path.join(tempfile.gettempdir(), "rpa-coordinator"))


def door_path(settings: Settings) -> Path:
    if settings.coordinator_door:
        return Path(settings.coordinator_door)
    if os.geteuid() == 0:
        return Path("/run/rpa-coordinator/robot.sock")
    return work_dir(settings) / "robot.sock"


def make_driver(settings: Settings) -> SessionDriver:
    if settings.coordinator_driver == "process":
        return ProcessDriver(settings.coordinator_work_dir)
    if settings.coordinator_driver == "rdp":
        return RdpDriver(
            str(work_dir(settings)),
            RobotDoor(door_path(settings)),
            client=settings.coordinator_rdp_client,
            display=settings.coordinator_display,
            robot_shell=settings.coordinator_robot_shell,
            logon_timeout_s=settings.session_logon_timeout_s,
        )
    raise ValueError(f"unknown session driver {settings.coordinator_driver!r}")  # pragma: no cover


def seal_key(settings: Settings) -> SealKeyPair:
    """The coordinator's key pair: from the settings, else from its file (made on first start)."""
    if settings.coordinator_seal_key is not None:
        return SealKeyPair.from_text(settings.coordinator_seal_key.get_secret_value())
    path = Path(settings.coordinator_seal_key_file or work_dir(settings) / "seal.key")
    # The file is 0600; the directory keeps its mode (session directories of other users live there).
    path.parent.mkdir(parents=True, exist_ok=True)
    return load_or_create_key_pair(path)


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
                coordinator = Coordinator(
                    ctx,
                    robot_id,
                    make_driver(settings),
                    seal_key=seal_key(settings),
                    state_file=settings.coordinator_state_file
                    or work_dir(settings) / f"sessions-{robot_id}.json",
                    register_key=settings.coordinator_register_key,
                )
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
    install_metrics(app, "coordinator", settings)

    def _ctx(request: Request) -> ServiceContext:
        c: ServiceContext = request.app.state.ctx
        return c

    app.include_router(health_router(_ctx))
    return app
