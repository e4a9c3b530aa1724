"""Container health check: ``python -m rpa_common.probe [URL]`` exits 0 when URL answers 200.

The image has no curl or wget; this is what its ``HEALTHCHECK`` runs. The default URL is the API's
readiness (``http://127.0.0.1:$RPA_API_PORT/readyz``); compose files pass each service's own.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    url = args[0] if args else f"http://127.0.0.1:{os.environ.get('RPA_API_PORT', '8000')}/readyz"
    if not url.startswith(("http://127.0.0.1", "http://localhost")):
        print(f"probe: only local URLs are probed, not {url}", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 - checked above: local http only
            return 0 if resp.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"probe: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
