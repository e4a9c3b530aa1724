"""The management API application: every router under ``/api/v1``, problem+json errors, health."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Receive, Scope, Send

from rpa_api.accounts.router import router as accounts_router
from rpa_api.audit.router import router as audit_router
from rpa_api.auth.oidc import router as oidc_router
from rpa_api.auth.router import router as auth_router
from rpa_api.auth.sso import router as sso_router
from rpa_api.calendars.router import router as calendars_router
from rpa_api.events.router import router as events_router
from rpa_api.external_apps.router import router as external_apps_router
from rpa_api.folders.router import router as folders_router
from rpa_api.grants import GrantCache
from rpa_api.identity.router import router as identity_router
from rpa_api.jobs.router import router as jobs_router
from rpa_api.licenses.router import router as licenses_router
from rpa_api.logs.router import router as logs_router
from rpa_api.openapi import API_DESCRIPTION, install_contract, operation_id
from rpa_api.processes.router import router as processes_router
from rpa_api.queues.router import router as queues_router
from rpa_api.queues.router import tasks_router
from rpa_api.ratelimit import RateLimiter, limit_anonymous
from rpa_api.resources.router import router as resources_router
from rpa_api.robot_groups.router import router as robot_groups_router
from rpa_api.robots.router import router as robots_router
from rpa_api.roles.router import router as roles_router
from rpa_api.screenshots.router import router as screenshots_router
from rpa_api.statistics.router import router as statistics_router
from rpa_api.terminal_servers.router import router as terminal_servers_router
from rpa_api.text_guard import text_guard
from rpa_api.triggers.router import router as triggers_router
from rpa_api.triggers.router import webhook_router
from rpa_api.users.router import router as users_router
from rpa_api.webhooks.router import router as webhooks_router
from rpa_common.logging import configure_logging
from rpa_common.service import (
    BodySizeLimit,
    RequestLog,
    ServiceContext,
    health_router,
    install_metrics,
    install_problem_handlers,
    problem,
    service_context,
    tune_gc,
)
from rpa_common.settings import Settings, get_settings

API_PREFIX = "/api/v1"

# Endpoints that take a form or a multipart upload instead of JSON.
_FORM_PATHS = re.compile(
    r"^/api/v1/(auth/token|auth/ldap/[^/]+/token|auth/refresh|auth/revoke|processes(/[^/]+)?/versions|processes/publish"
    r"|queues/[^/]+/tasks/csv|triggers/import)$"
)
_CSV_PATHS = re.compile(r"^/api/v1/(queues/[^/]+/tasks/csv|triggers/import)$")
_UPLOAD_PATHS = re.compile(r"^/api/v1/processes(/[^/]+)?/(versions|publish)$|^/api/v1/processes/publish$")


class RequireJSON:
    """415 for a request body that is neither JSON nor, where an endpoint takes one, a form."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = dict(scope.get("headers") or [])
            length = headers.get(b"content-length", b"0")
            has_body = b"transfer-encoding" in headers or (length.isdigit() and int(length) > 0)
            ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            path = scope["path"]
            is_json = ctype == "application/json" or ctype.endswith("+json")
            is_form = ctype in ("multipart/form-data", "application/x-www-form-urlencoded")
            if has_body and not is_json and not (is_form and _FORM_PATHS.match(path)):
                wanted = "multipart/form-data or a form" if _FORM_PATHS.match(path) else "application/json"
                resp = problem(
                    415,
                    "Unsupported media type",
                    f"content-type {ctype or '(none)'} given; send {wanted}",
                    instance=path,
                )
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None, ctx: ServiceContext | None = None) -> FastAPI:
    """Build the app. Tests pass their own ``ctx``; otherwise the lifespan opens one."""
    settings = settings or (ctx.settings if ctx else get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if ctx is not None:
            app.state.ctx = ctx
            yield
            return
        configure_logging(settings.log_level, settings.log_json)
        async with service_context(settings, "api") as own:
            app.state.ctx = own
            yield

    # FastAPIOffline: /docs loads Swagger UI's script, styles and icon from the API itself
    # (/static-offline-docs), never from a CDN: orchestrators often run where there is no internet.
    app = FastAPIOffline(
        title="RPA Orchestrator API",
        version="1.0.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        # validatorUrl null: Swagger UI would otherwise send the document to validator.swagger.io.
        swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},
        generate_unique_id_function=operation_id,
    )
    if ctx is not None:
        app.state.ctx = ctx
    app.state.grants = GrantCache()
    app.state.limiter = RateLimiter()
    install_problem_handlers(app)
    install_contract(app)

    def limit_for(path: str, content_type: str) -> int:
        if _UPLOAD_PATHS.match(path):
            return settings.max_package_bytes + 64 * 1024  # room for the multipart envelope
        if _CSV_PATHS.match(path):
            return settings.task_csv_max_bytes + 64 * 1024
        return settings.max_json_bytes

    app.add_middleware(RequireJSON)
    app.add_middleware(BodySizeLimit, limit_for=limit_for)
    app.add_middleware(RequestLog, service="api")
    install_metrics(app, "api", settings)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        # Outermost, so preflights and error answers carry the headers too (the SPA on its own origin).
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID", "If-Match"],
            expose_headers=["Location", "Retry-After", "ETag"],
            max_age=settings.cors_max_age_s,
        )

    def _ctx(request: Request) -> ServiceContext:
        c: ServiceContext = request.app.state.ctx
        return c

    app.include_router(health_router(_ctx))
    for router, tag in (
        (auth_router, "auth"),
        (sso_router, "auth"),
        (oidc_router, "auth"),
        (identity_router, "identity providers"),
        (accounts_router, "accounts"),
        (users_router, "users"),
        (roles_router, "roles"),
        (external_apps_router, "external apps"),
        (folders_router, "folders"),
        (robots_router, "robots"),
        (robot_groups_router, "robot groups"),
        (terminal_servers_router, "terminal servers"),
        (processes_router, "processes"),
        (jobs_router, "jobs"),
        (logs_router, "logs"),
        (queues_router, "queues"),
        (tasks_router, "tasks"),
        (resources_router, "resources"),
        (calendars_router, "calendars"),
        (events_router, "events"),
        (audit_router, "audit"),
        (triggers_router, "triggers"),
        (webhook_router, "triggers"),
        (licenses_router, "licenses"),
        (webhooks_router, "webhooks"),
        (statistics_router, "statistics"),
        (screenshots_router, "screenshots"),
    ):
        # Text no database can store (NUL, invalid UTF-8) is a 422 before any endpoint runs.
        app.include_router(
            router,
            prefix=API_PREFIX,
            tags=[tag],
            dependencies=[Depends(text_guard), Depends(limit_anonymous)],
        )
    return app


def serve_app() -> FastAPI:
    """The app of one API worker process (``rpa-api serve`` with several workers): ``create_app``,
    then the process's garbage collector tuned as every service's is (``tune_gc``)."""
    app = create_app()
    tune_gc()
    return app
