"""Benchmark: the statistics endpoints through the real API on 1,000,000 jobs.

Runs on its own::

    .venv/bin/python bench/stats.py [--db postgresql|mariadb] [--jobs 1000000] [--days 30]
                                    [--repeat 15] [--no-rollups] [--json PATH]

It starts a private NATS server, a fresh database built from the migrations on the local
PostgreSQL or MariaDB (``--db``; ``RPA_DB_URL`` names another server), and ONE API process
(``python -m rpa_api serve``). Into one account it writes, as fast as the database takes them (COPY
on PostgreSQL, multi-row INSERTs on MariaDB):

- ``--jobs`` jobs over the last ``--days`` days, in 20 processes on 50 robots: 80% Successful,
  10% Failed, 3% Stopped, 2% Running, 5% Pending, run times of seconds to minutes;
- the 50 robots' status history: alternating Ready and Working intervals of 5 to 60 minutes over
  the same days (about 100,000 intervals), the last one open;
- 10 queues with 100,000 tasks, each added, taken and ended (300,000 history entries).

Then it fills the hourly job and queue rollups as the scheduler's rollup pass does (``rpa_common.rollups``,
the same function, up to now less the margin; ``--no-rollups`` leaves them empty, to measure the
jobs and the task history read alone), updates the planner's statistics (``VACUUM ANALYZE`` / ``ANALYZE TABLE``), warms up, and
calls each statistics endpoint ``--repeat`` times, one request at a time, over three ranges: the
whole ``--days`` by day (every job), the last 7 days by hour, the last 24 hours by hour. It prints a
table of p50/p95 per endpoint and range, and the floor measured in the same run: a plain
``SELECT count(*)`` of the account's jobs in the same range, straight on the database (no API),
and each endpoint's ratio to it. The goal: every answer under 200 ms.

``--json PATH`` writes ``{"db", "jobs", "endpoints": {"<endpoint> <range>": {"p50_ms", "p95_ms",
"rows", "floor_p50_ms", "ratio", "failed"}}, "max_p95_ms"}`` (null when a call failed: a 503 once the
request's database deadline, ``RPA_DB_REQUEST_DEADLINE_S``, ran out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from harness.infra import (
    Services,
    bench_settings,
    free_port,
    fresh_database,
    percentile,
    print_table,
    ratio,
    seed_account,
    service_env,
    start_nats,
    start_service,
)
from harness.infra import bulk_robots as make_robots

from rpa_common.db.engine import create_engine, session_factory
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import JobRollupState, Process, ProcessVersion, Queue
from rpa_common.rollups import rollup_account

ADMIN_URLS = {
    "postgresql": "postgresql://postgres@127.0.0.1:5432/postgres",
    "mariadb": "mariadb://root@127.0.0.1:3306/mysql",
}
PROCESSES, ROBOTS, QUEUES, TASKS = 20, 50, 10, 100_000
STATES = [("Successful", 80), ("Failed", 10), ("Stopped", 3), ("Running", 2), ("Pending", 5)]
ENDPOINTS = [
    ("jobs by state", "jobs", {"group": "process"}),
    ("jobs by state/robot", "jobs", {"group": "robot"}),
    ("success rate", "jobs/success-rate", {"group": "process"}),
    ("durations p50/p95", "jobs/durations", {"group": "process"}),
    ("robot utilisation", "robots/utilisation", {}),
    ("queues", "queues", {}),
]


# Data --------------------------------------------------------------------------------------------


def time_ordered_id(rnd: random.Random, at: datetime) -> uuid.UUID:
    """A UUIDv7 (time first, then random): rows made in time order arrive in key order."""
    ms = int(at.timestamp() * 1000)
    value = (ms << 80) | (0x7 << 76) | (rnd.getrandbits(12) << 64) | (0b10 << 62) | rnd.getrandbits(62)
    return uuid.UUID(int=value)


def job_rows(
    n: int, now: datetime, days: int, processes: list[tuple[uuid.UUID, uuid.UUID]], robots: list[uuid.UUID]
) -> Any:
    """``n`` job tuples (id, process, version, robot, state, created, started, ended), made lazily in
    creation order, as a live system writes them (the load then appends to every time index)."""
    rnd = random.Random(7)
    span = days * 86400
    weights = [w for _, w in STATES]
    names = [s for s, _ in STATES]
    start = now - timedelta(seconds=span)
    for k in range(n):
        created = start + timedelta(seconds=(k + rnd.random()) * span / n)
        state = rnd.choices(names, weights)[0]
        process_id, version_id = processes[rnd.randrange(len(processes))]
        robot = None if state == "Pending" else robots[rnd.randrange(len(robots))]
        started = None if state == "Pending" else created + timedelta(seconds=rnd.random() * 30)
        ended = None
        if started is not None and state != "Running":
            ended = started + timedelta(seconds=rnd.lognormvariate(4, 1))
        yield (time_ordered_id(rnd, created), process_id, version_id, robot, state, created, started, ended)


def interval_rows(now: datetime, days: int, robots: list[uuid.UUID]) -> list[tuple[Any, ...]]:
    rnd = random.Random(8)
    out = []
    for robot in robots:
        t = now - timedelta(days=days)
        status = "Ready"
        while True:
            end = t + timedelta(minutes=rnd.uniform(5, 60))
            out.append((uuid.uuid4(), robot, status, t, None if end >= now else end))
            if end >= now:
                break
            t, status = end, "Working" if status == "Ready" else "Ready"
    return out


def task_rows(
    now: datetime, days: int, queues: list[uuid.UUID]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    rnd = random.Random(9)
    tasks, events = [], []
    for i in range(TASKS):
        created = now - timedelta(seconds=rnd.random() * days * 86400)
        taken = created + timedelta(seconds=rnd.uniform(1, 600))
        ended = taken + timedelta(seconds=rnd.uniform(1, 120))
        waiting = ended > now
        state = "Created" if waiting else ("Successful" if rnd.random() < 0.9 else "Failed (Business)")
        tid = uuid.uuid4()
        tasks.append(
            (
                tid,
                queues[i % len(queues)],
                f"t{i}",
                state,
                created,
                None if waiting else taken,
                None if waiting else ended,
            )
        )
        events.append((uuid.uuid4(), tid, created, "created", None, "Created"))
        if not waiting:
            events.append((uuid.uuid4(), tid, taken, "state", "Created", "In Progress"))
            events.append((uuid.uuid4(), tid, ended, "state", "In Progress", state))
    return tasks, events


async def seed_objects(
    settings: Any, account_id: uuid.UUID
) -> tuple[list[tuple[uuid.UUID, uuid.UUID]], list[uuid.UUID], list[uuid.UUID]]:
    robots = [rid for rid, _ in await make_robots(settings, account_id, ROBOTS)]
    processes = [(uuid.uuid4(), uuid.uuid4()) for _ in range(PROCESSES)]
    queues = [uuid.uuid4() for _ in range(QUEUES)]
    engine = create_engine(settings, "bench", pool_size=1)
    try:

        async def work(session: Any) -> None:
            for i, (pid, _) in enumerate(processes):
                session.add(Process(id=pid, account_id=account_id, name=f"bench-{i:02d}"))
            for i, qid in enumerate(queues):
                session.add(Queue(id=qid, account_id=account_id, name=f"bench-q{i:02d}"))
            await session.flush()
            for pid, vid in processes:
                session.add(
                    ProcessVersion(
                        id=vid,
                        account_id=account_id,
                        process_id=pid,
                        version="1.0.0",
                        entry_point="main.py",
                        sha256="0" * 64,
                        size=1,
                    )
                )

        await run_in_transaction(session_factory(engine), work)
    finally:
        await engine.dispose()
    return processes, robots, queues


JOB_COLUMNS = (
    "id",
    "account_id",
    "process_id",
    "process_version_id",
    "robot_id",
    "state",
    "priority",
    "source",
    "input_args",
    "attempt",
    "max_retries",
    "offers",
    "created_at",
    "updated_at",
    "started_at",
    "ended_at",
)
INTERVAL_COLUMNS = ("id", "account_id", "robot_id", "status", "started_at", "ended_at")
TASK_COLUMNS = (
    "id",
    "account_id",
    "queue_id",
    "name",
    "description",
    "comment",
    "parameters",
    "priority",
    "tags",
    "state",
    "retry_number",
    "lock_token",
    "created_at",
    "updated_at",
    "started_at",
    "ended_at",
)
EVENT_COLUMNS = ("id", "account_id", "task_id", "at", "kind", "from_state", "to_state", "actor_type")


def _job(account: uuid.UUID, r: tuple[Any, ...]) -> tuple[Any, ...]:
    jid, pid, vid, robot, state, created, started, ended = r
    return (
        jid,
        account,
        pid,
        vid,
        robot,
        state,
        2,
        "api",
        "{}",
        1,
        0,
        0,
        created,
        ended or started or created,
        started,
        ended,
    )


def _task(account: uuid.UUID, r: tuple[Any, ...]) -> tuple[Any, ...]:
    tid, qid, name, state, created, started, ended = r
    return (
        tid,
        account,
        qid,
        name,
        "",
        "",
        "{}",
        2,
        "[]",
        state,
        0,
        0,
        created,
        ended or created,
        started,
        ended,
    )


def _event(account: uuid.UUID, r: tuple[Any, ...]) -> tuple[Any, ...]:
    eid, tid, at, kind, from_state, to_state = r
    return (eid, account, tid, at, kind, from_state, to_state, "robot")


async def load_postgresql(
    db_url: str, account: uuid.UUID, jobs: Any, intervals: list[Any], tasks: list[Any], events: list[Any]
) -> None:
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        batch: list[tuple[Any, ...]] = []
        for r in jobs:
            batch.append(_job(account, r))
            if len(batch) == 100_000:
                await conn.copy_records_to_table("job", records=batch, columns=JOB_COLUMNS)
                batch = []
        if batch:
            await conn.copy_records_to_table("job", records=batch, columns=JOB_COLUMNS)
        await conn.copy_records_to_table(
            "robot_status_interval",
            records=[(i, account, rb, s, a, b) for i, rb, s, a, b in intervals],
            columns=INTERVAL_COLUMNS,
        )
        await conn.copy_records_to_table(
            "task", records=[_task(account, t) for t in tasks], columns=TASK_COLUMNS
        )
        await conn.copy_records_to_table(
            "task_event", records=[_event(account, e) for e in events], columns=EVENT_COLUMNS
        )
        for table in ("job", "robot_status_interval", "task", "task_event"):
            await conn.execute(f"VACUUM ANALYZE {table}")
    finally:
        await conn.close()


def _lit(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, uuid.UUID):
        return f"'{v.hex}'"
    if isinstance(v, datetime):
        return "'" + v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") + "'"
    if isinstance(v, int):
        return str(v)
    return "'" + str(v).replace("\\", "\\\\").replace("'", "''") + "'"


async def load_mariadb(
    db_url: str, account: uuid.UUID, jobs: Any, intervals: list[Any], tasks: list[Any], events: list[Any]
) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from rpa_common.settings import normalize_db_url

    engine = create_async_engine(normalize_db_url(db_url))
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            cursor = await raw.driver_connection.cursor()  # type: ignore[union-attr]

            async def insert(table: str, columns: tuple[str, ...], rows: Any) -> None:
                # Our own table and column names, values quoted by _lit: no outside input.
                head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "  # noqa: S608
                chunk: list[str] = []
                for row in rows:
                    chunk.append("(" + ",".join(_lit(v) for v in row) + ")")
                    if len(chunk) == 5000:
                        await cursor.execute(head + ",".join(chunk))
                        chunk = []
                if chunk:
                    await cursor.execute(head + ",".join(chunk))
                await raw.driver_connection.commit()  # type: ignore[union-attr]

            await cursor.execute("SET unique_checks = 0, foreign_key_checks = 0")
            await insert("job", JOB_COLUMNS, (_job(account, r) for r in jobs))
            await insert(
                "robot_status_interval",
                INTERVAL_COLUMNS,
                ((i, account, rb, s, a, b) for i, rb, s, a, b in intervals),
            )
            await insert("task", TASK_COLUMNS, (_task(account, t) for t in tasks))
            await insert("task_event", EVENT_COLUMNS, (_event(account, e) for e in events))
            for table in ("job", "robot_status_interval", "task", "task_event"):
                await cursor.execute(f"ANALYZE TABLE {table}")
                await cursor.fetchall()
    finally:
        await engine.dispose()


async def fill_rollups(settings: Any, db: str, account: uuid.UUID, now: datetime) -> tuple[float, int]:
    """The account's hourly job and queue rollups, by the scheduler's own pass function: seconds
    taken, rows made."""
    engine = create_engine(settings, "bench", pool_size=1)
    sessions = session_factory(engine)
    try:

        async def ensure(session: Any) -> None:
            session.add(JobRollupState(account_id=account))

        await run_in_transaction(sessions, ensure)
        t0 = time.perf_counter()
        while True:

            async def work(session: Any) -> Any:
                return await rollup_account(
                    session,
                    account,
                    now=now,
                    margin_s=settings.statistics_rollup_margin_s,
                    max_hours=settings.statistics_rollup_max_hours,
                )

            done = await run_in_transaction(sessions, work)
            if done is None or done[1]:
                break
        took = time.perf_counter() - t0
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            rows = 0
            for table in ("job_rollup", "queue_rollup"):
                rows += int((await conn.execute(sa.text(f"SELECT count(*) FROM {table}"))).scalar_one())  # noqa: S608
                analyze = "VACUUM ANALYZE" if db == "postgresql" else "ANALYZE TABLE"
                await conn.execute(sa.text(f"{analyze} {table}"))
    finally:
        await engine.dispose()
    return took, rows


# Timing ------------------------------------------------------------------------------------------


async def floor_ms(
    db_url: str, account: uuid.UUID, start: datetime, end: datetime, repeat: int
) -> list[float]:
    """A plain count of the account's jobs in the range, straight on the database."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from rpa_common.models import Job
    from rpa_common.settings import normalize_db_url

    engine = create_async_engine(normalize_db_url(db_url))
    stmt = (
        sa.select(sa.func.count())
        .select_from(Job)
        .where(Job.account_id == account, Job.created_at >= start, Job.created_at < end)
    )
    out = []
    try:
        async with engine.connect() as conn:
            await conn.execute(stmt)
            for _ in range(repeat):
                t0 = time.perf_counter()
                await conn.execute(stmt)
                out.append((time.perf_counter() - t0) * 1000)
    finally:
        await engine.dispose()
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["RPA_DB_URL"] = os.environ.get("RPA_DB_URL") or ADMIN_URLS[args.db]
    services = Services()
    try:
        nats_url = await start_nats(services)
        async with fresh_database("stats") as db_url:
            settings = bench_settings(db_url, nats_url)
            account = await seed_account(settings)
            processes, robots, queues = await seed_objects(settings, account.account_id)
            now = datetime.now(UTC).replace(microsecond=0)
            t0 = time.perf_counter()
            jobs = job_rows(args.jobs, now, args.days, processes, robots)
            intervals = interval_rows(now, args.days, robots)
            tasks, events = task_rows(now, args.days, queues)
            load = load_postgresql if args.db == "postgresql" else load_mariadb
            await load(db_url, account.account_id, jobs, intervals, tasks, events)
            load_s = time.perf_counter() - t0
            print(
                f"loaded {args.jobs} jobs, {len(intervals)} status intervals, {len(tasks)} tasks, "
                f"{len(events)} task events in {load_s:.1f}s",
                flush=True,
            )
            rollup_s, rollup_rows = 0.0, 0
            if not args.no_rollups:
                rollup_s, rollup_rows = await fill_rollups(settings, args.db, account.account_id, now)
                print(f"rollups: {rollup_rows} rows in {rollup_s:.1f}s", flush=True)
            port = free_port()
            env = service_env(db_url, nats_url, RPA_API_PORT=str(port))
            await start_service(services, "api", "rpa_api", env, port)
            ranges = [
                (f"{args.days}d/day", now - timedelta(days=args.days), now + timedelta(seconds=1), "day"),
                ("7d/hour", now - timedelta(days=7), now + timedelta(seconds=1), "hour"),
                ("24h/hour", now - timedelta(hours=24), now + timedelta(seconds=1), "hour"),
            ]
            figures: dict[str, Any] = {}
            headers = {"Authorization": f"Bearer {account.token}"}
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120
            ) as client:
                for label, start, end, bucket in ranges:
                    floor = await floor_ms(db_url, account.account_id, start, end, args.repeat)
                    floor_p50 = percentile(floor, 50)
                    for name, path, extra in ENDPOINTS:
                        params = {"from": start.isoformat(), "to": end.isoformat(), "bucket": bucket, **extra}
                        times, rows, failed = [], 0, ""
                        for i in range(args.repeat + 2):
                            t = time.perf_counter()
                            resp = await client.get(f"/api/v1/statistics/{path}", params=params)
                            elapsed = (time.perf_counter() - t) * 1000
                            if resp.status_code != 200:
                                # 503: the request's database deadline (RPA_DB_REQUEST_DEADLINE_S) ran out.
                                failed = f"{resp.status_code} after {elapsed:.0f} ms"
                                break
                            rows = len(resp.json()["rows"])
                            if i >= 2:  # two warm-ups
                                times.append(elapsed)
                        p50 = percentile(times, 50)
                        figures[f"{name} {label}"] = {
                            "p50_ms": round(p50, 1) if times else None,
                            "p95_ms": round(percentile(times, 95), 1) if times else None,
                            "rows": rows,
                            "floor_p50_ms": round(floor_p50, 1),
                            "ratio": round(p50 / floor_p50, 2) if floor_p50 and times else None,
                            "failed": failed or None,
                        }
                        print(f"  {name} {label}: " + (failed or f"p50 {p50:.1f} ms"), flush=True)
            jobs_counted = await floor_count(db_url, account.account_id)
    finally:
        services.stop()
    rows_out: list[tuple[str, Any]] = [
        ("database", args.db),
        ("jobs in the account", jobs_counted),
        ("load time", f"{load_s:.1f} s"),
        ("rollups", "none (--no-rollups)" if args.no_rollups else f"{rollup_rows} rows in {rollup_s:.1f} s"),
    ]
    for key, f in figures.items():
        if f["failed"]:
            shown = f"failed: {f['failed']}"
        else:
            shown = (
                f"p50 {f['p50_ms']} / p95 {f['p95_ms']} ms, floor {f['floor_p50_ms']} ms, "
                f"{ratio(f['p50_ms'], f['floor_p50_ms'])}"
            )
        rows_out.append((key, shown))
    timed = [f["p95_ms"] for f in figures.values() if f["p95_ms"] is not None]
    max_p95 = max(timed) if len(timed) == len(figures) else None
    rows_out.append(("worst p95 (goal < 200 ms)", "a call failed" if max_p95 is None else f"{max_p95} ms"))
    print_table(f"statistics endpoints through the API ({args.db})", rows_out)
    return {
        "db": args.db,
        "jobs": jobs_counted,
        "rollups": not args.no_rollups,
        "rollup_rows": rollup_rows,
        "rollup_fill_s": round(rollup_s, 1),
        "endpoints": figures,
        "max_p95_ms": max_p95,
    }


async def floor_count(db_url: str, account: uuid.UUID) -> int:
    from sqlalchemy.ext.asyncio import create_async_engine

    from rpa_common.models import Job
    from rpa_common.settings import normalize_db_url

    engine = create_async_engine(normalize_db_url(db_url))
    try:
        async with engine.connect() as conn:
            return int(
                (
                    await conn.execute(
                        sa.select(sa.func.count()).select_from(Job).where(Job.account_id == account)
                    )
                ).scalar_one()
            )
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("postgresql", "mariadb"), default="postgresql")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30, help="the jobs span this many days up to now")
    parser.add_argument("--repeat", type=int, default=15, help="timed calls per endpoint and range")
    parser.add_argument("--no-rollups", action="store_true", help="measure without the hourly rollups")
    parser.add_argument("--json", type=str, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
