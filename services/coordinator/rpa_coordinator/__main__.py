"""``python -m rpa_coordinator serve``."""

from __future__ import annotations

import argparse

from rpa_common.logging import configure_logging
from rpa_common.service import run_service, tune_gc
from rpa_common.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="rpa-coordinator", description="RPA orchestrator terminal-server coordinator"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="open and close sessions on command (health on the coordinator port)")
    parser.parse_args(argv)
    settings = Settings()
    from rpa_coordinator.app import create_app

    configure_logging(settings.log_level, settings.log_json)
    app = create_app(settings)
    tune_gc()
    run_service(app, settings.coordinator_host, settings.coordinator_port, settings.log_level)


if __name__ == "__main__":
    main()
