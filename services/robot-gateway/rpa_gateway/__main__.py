"""``python -m rpa_gateway serve``: run the robot gateway."""

from __future__ import annotations

import argparse
import sys

from rpa_common.credentials import preflight
from rpa_common.logging import configure_logging
from rpa_common.service import run_service, tune_gc
from rpa_common.settings import get_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rpa-gateway", description="RPA robot gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gateway (WebSocket /robot/v1, health)")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.command == "serve":
        from rpa_gateway.app import create_app

        configure_logging(settings.log_level, settings.log_json)
        # The gateway decrypts credentials for robots: a wrong or missing master key stops it here.
        preflight(settings)
        tune_gc()
        run_service(
            create_app(settings),
            settings.gateway_host,
            settings.gateway_port,
            settings.log_level,
            # Named, not "auto": what a connection costs was measured with this implementation
            # (bench/robots_idle.py).
            ws="websockets-sansio",
            # permessage-deflate keeps a zlib compressor and decompressor per connection for its
            # whole life: about 49 KiB of a measured 82 KiB per idle robot. Robot frames are small
            # JSON, so it is off unless configured.
            ws_per_message_deflate=settings.gateway_ws_compression,
        )
    else:  # pragma: no cover - argparse refuses unknown commands
        sys.exit(2)


if __name__ == "__main__":
    main()
