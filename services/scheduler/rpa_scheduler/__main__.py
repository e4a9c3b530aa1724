"""``python -m rpa_scheduler serve``."""

from __future__ import annotations

import argparse

from rpa_common.logging import configure_logging
from rpa_common.service import run_service, tune_gc
from rpa_common.settings import get_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rpa-scheduler", description="RPA orchestrator scheduler")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "serve", help="run the dispatcher, the sweeps and the triggers (health on the scheduler port)"
    )
    parser.parse_args(argv)
    settings = get_settings()
    from rpa_scheduler.app import create_app

    configure_logging(settings.log_level, settings.log_json)
    app = create_app(settings)
    tune_gc()
    run_service(app, settings.scheduler_host, settings.scheduler_port, settings.log_level)


if __name__ == "__main__":
    main()
