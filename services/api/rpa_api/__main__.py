"""``python -m rpa_api serve | bootstrap``."""

from __future__ import annotations

import argparse
import asyncio
import sys

from rpa_common.credentials import preflight
from rpa_common.db.engine import create_engine, session_factory
from rpa_common.db.uow import run_in_transaction
from rpa_common.logging import configure_logging
from rpa_common.service import cpu_cores, run_service, tune_gc
from rpa_common.settings import get_settings


async def _bootstrap(account: str, username: str) -> None:
    from rpa_api.bootstrap import bootstrap

    settings = get_settings()
    engine = create_engine(settings, "cli", pool_size=1)
    try:
        password = settings.admin_password.get_secret_value() if settings.admin_password else None
        acc, generated = await run_in_transaction(
            session_factory(engine), lambda s: bootstrap(s, account, username, password)
        )
    finally:
        await engine.dispose()
    print(f"account {acc.name!r} ready ({acc.id})")
    if generated:
        # Printed once, to the operator's terminal; never logged.
        print(f"created user {username!r} with generated password: {generated}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rpa-api", description="RPA orchestrator management API")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the API server")
    boot = sub.add_parser("bootstrap", help="create the first account and the admin user (idempotent)")
    boot.add_argument("--account", default="default")
    boot.add_argument("--username", default="admin")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.command == "serve":
        configure_logging(settings.log_level, settings.log_json)
        # A wrong or missing credentials master key stops here (exit 2, the reason on stderr).
        preflight(settings)
        # One worker process per core: a Python process uses one core, and the API's work per
        # request is CPU (the database does the rest). RPA_API_WORKERS overrides.
        workers = settings.api_workers or cpu_cores()
        if workers == 1:
            from rpa_api.app import create_app

            app = create_app(settings)
            tune_gc()
            run_service(app, settings.api_host, settings.api_port, settings.log_level)
        else:
            run_service(
                "rpa_api.app:serve_app",  # each worker process: the app, then tune_gc()
                settings.api_host,
                settings.api_port,
                settings.log_level,
                workers=workers,
            )
    elif args.command == "bootstrap":
        asyncio.run(_bootstrap(args.account, args.username))
    else:  # pragma: no cover - argparse refuses unknown commands
        sys.exit(2)


if __name__ == "__main__":
    main()
