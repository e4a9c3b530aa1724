"""``python -m rpa_gateway serve``: run the robot gateway."""

from __future__ import annotations

import argparse
import gc
import sys

from rpa_common.credentials import preflight
from rpa_common.logging import configure_logging
from rpa_common.service import run_service
from rpa_common.settings import get_settings

# Young objects allocated between two collections of the youngest generation (CPython: 700). Log
# frames make a dozen objects a line, kept until their batch commits: at the default, collections
# ran every few frames and walked tens of thousands of pending lines, a third of the gateway's CPU
# per line (bench/logs.py). Collections still run, less often; cycles are still freed.
GC_YOUNG_THRESHOLD = 50_000


def _tune_gc() -> None:
    """Fewer, larger young collections, and the modules loaded at start out of every collection."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


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
        _tune_gc()
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
