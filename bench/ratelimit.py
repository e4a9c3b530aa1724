"""Benchmark: what the shared API rate limiter adds to each call.

Runs on its own::

    .venv/bin/python bench/ratelimit.py [--calls 3000]

On a fresh database built from the migrations (the local PostgreSQL, or ``RPA_DB_URL``'s server), it
times ``RateLimiter.hit`` for one caller, in one run:

- the floor: the limiter switched off (a limit of 0, what ``rate_limit_per_minute = 0`` costs);
- the limiter as shipped, far from the limit (local counting, flushed in the background);
- the limiter as shipped, for a caller near its limit (every call adds to the shared total);
- the naive design: one database upsert per call (``slack_fraction`` so large no slice is spent locally).

``--json PATH`` writes the means. It prints the mean and p99 cost per call in microseconds and the ratio of the naive design to the shipped one, so the
difference of the shipped design is plain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

from harness.infra import fresh_database, percentile, print_table

from rpa_api.ratelimit import RateLimited, RateLimiter
from rpa_common.db.engine import create_engine, session_factory
from rpa_common.settings import Settings


async def _time(limiter: RateLimiter, ctx: Any, key: str, limit: int, calls: int) -> tuple[float, float]:
    samples: list[float] = []
    for _ in range(calls):
        start = time.perf_counter()
        with contextlib.suppress(RateLimited):
            await limiter.hit(ctx, key, limit)
        samples.append((time.perf_counter() - start) * 1e6)
    await asyncio.sleep(limiter.flush_s * 2)  # let the background flushes finish
    return sum(samples) / len(samples), percentile(samples, 99)


async def main(calls: int) -> dict[str, float]:
    async with fresh_database("ratelimit") as url:
        settings = Settings(db_url=url, secret_key="bench-" + "x" * 40)  # type: ignore[arg-type]
        engine = create_engine(settings, "api")
        ctx = cast(Any, SimpleNamespace(sessions=session_factory(engine), settings=settings))
        try:
            floor = await _time(RateLimiter(), ctx, "k:floor", 0, calls)
            shipped = await _time(RateLimiter(), ctx, "k:far", 10**9, calls)
            near = await _time(RateLimiter(), ctx, "k:near", calls // 2, calls)
            naive = await _time(RateLimiter(slack_fraction=10**12), ctx, "k:naive", 10**9, calls)
        finally:
            await engine.dispose()
    rows: list[tuple[str, Any]] = [("calls per variant", calls), ("database", engine.dialect.name)]
    for name, (mean, p99) in (
        ("off (floor)", floor),
        ("shipped, far from limit", shipped),
        ("shipped, at the limit", near),
        ("naive: DB upsert per call", naive),
    ):
        rows.append((f"{name}: mean us", f"{mean:.1f}"))
        rows.append((f"{name}: p99 us", f"{p99:.1f}"))
    rows.append(("naive / shipped far (mean)", f"{naive[0] / shipped[0]:.0f}x"))
    rows.append(("shipped far - floor (mean us)", f"{shipped[0] - floor[0]:.1f}"))
    print_table("rate limiter: cost per call", rows)
    return {"floor_us": floor[0], "shipped_us": shipped[0], "near_us": near[0], "naive_us": naive[0]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--json", help="write a summary (mean microseconds per call of each variant) here")
    args = parser.parse_args()
    summary = asyncio.run(main(args.calls))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
