"""Benchmark: 10,000 schedule triggers, 1,000 of them due in the same second; how fast their jobs exist.

Runs on its own::

    .venv/bin/python bench/triggers.py [--triggers 10000] [--due 1000] [--lead 60] [--replicas 1]
                                       [--json PATH]

It starts everything it needs: a private NATS server, a fresh database on the local PostgreSQL (or
``RPA_DB_URL``'s server, PostgreSQL or MariaDB) built from the migrations, and ``--replicas`` real
scheduler processes (``python -m rpa_scheduler serve``). The triggers are inserted directly: ``--due``
of them with a cron (six fields, seconds first, UTC) that fires once at the same second T, ``--lead``
seconds after the insert; the others with daily crons at 03:00 in a few time zones (never due
during the run). Every trigger targets one robot group; the robot is not connected, so the jobs
stay Pending and only their creation is measured.

Measured, from the database: ``all_created_s``, the time from T until the last of the due
triggers' jobs was created (``max(job.created_at) - T``), and the lag of each job (``created_at -
T``), p50/p99/max. The floor, in the same run after the schedulers stopped: a plain multi-row
insert of the same number of jobs and their first history rows in one transaction, which is the
least any scheduler must write; the table prints the ratio. ``--json`` writes ``{"triggers",
"due", "all_created_s", "fire_lag_p99_s"}`` plus the floor and the ratio. Goal: all 1,000 within
2 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa
from harness.infra import (
    Services,
    bench_settings,
    free_port,
    fresh_database,
    percentile,
    print_table,
    ratio,
    seed,
    service_env,
    start_nats,
    start_service,
)

from rpa_common.db.engine import create_engine, session_factory
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Job, JobEvent, Process, Trigger
from rpa_common.models.enums import ActorType, JobPriority, JobSource, JobState, TriggerKind

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo")


async def insert_triggers(
    sessions: Any,
    account_id: uuid.UUID,
    process_id: uuid.UUID,
    group_id: uuid.UUID,
    total: int,
    due: int,
    at: datetime,
) -> list[uuid.UUID]:
    """``total`` schedule triggers, ``due`` of them firing once at ``at``; the due ones' ids."""
    due_cron = f"{at.second} {at.minute} {at.hour} {at.day} {at.month} *"
    rows: list[dict[str, Any]] = []
    due_ids: list[uuid.UUID] = []
    now = datetime.now(UTC)
    for i in range(total):
        tid = uuid.uuid4()
        is_due = i < due
        if is_due:
            due_ids.append(tid)
        rows.append(
            {
                "id": tid,
                "account_id": account_id,
                "name": f"bench-trigger-{i:05d}",
                "description": "",
                "kind": TriggerKind.SCHEDULE,
                "enabled": True,
                "process_id": process_id,
                "robot_group_id": group_id,
                "priority": JobPriority.NORMAL,
                "input_args": {"n": i},
                "cron": due_cron if is_due else f"{i % 60} 3 * * *",
                "time_zone": "UTC" if is_due else ZONES[i % len(ZONES)],
                "min_tasks": 1,
                "max_jobs": 1,
                "jobs_per_tasks": 1,
                "completion_states": [],
                "config": {},
                "misfire_policy": "fire_once",
                "misfire_grace_s": 300,
                "created_at": now,
                "updated_at": now,
            }
        )
    for start in range(0, len(rows), 2000):
        batch = rows[start : start + 2000]

        async def work(session: Any, batch: list[dict[str, Any]] = batch) -> None:
            await session.execute(sa.insert(Trigger), batch)

        await run_in_transaction(sessions, work)
    return due_ids


async def floor_insert(
    sessions: Any,
    account_id: uuid.UUID,
    process_id: uuid.UUID,
    version_id: uuid.UUID,
    group_id: uuid.UUID,
    n: int,
) -> float:
    """Seconds for one transaction holding a plain multi-row insert of ``n`` jobs and their events."""
    now = datetime.now(UTC)
    jobs = [
        {
            "id": uuid.uuid4(),
            "account_id": account_id,
            "process_id": process_id,
            "process_version_id": version_id,
            "robot_group_id": group_id,
            "state": JobState.PENDING,
            "priority": JobPriority.NORMAL,
            "source": JobSource.TRIGGER,
            "input_args": {"n": i},
            "max_retries": 0,
            "attempt": 0,
            "offers": 0,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(n)
    ]
    events = [
        {
            "id": uuid.uuid4(),
            "account_id": account_id,
            "job_id": j["id"],
            "from_state": None,
            "to_state": JobState.PENDING,
            "attempt": 0,
            "at": now,
            "actor_type": ActorType.TRIGGER,
        }
        for j in jobs
    ]

    async def work(session: Any) -> None:
        await session.execute(sa.insert(Job), jobs)
        await session.execute(sa.insert(JobEvent), events)

    t0 = time.perf_counter()
    await run_in_transaction(sessions, work)
    return time.perf_counter() - t0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    services = Services()
    try:
        async with fresh_database("triggers") as db_url:
            nats_url = await start_nats(services)
            settings = bench_settings(db_url, nats_url)
            s = await seed(settings, robots=1)
            engine = create_engine(settings, "bench", pool_size=2)
            sessions = session_factory(engine)
            try:
                async with sessions() as session:
                    proc = (
                        await session.execute(sa.select(Process).where(Process.id == s.process_id))
                    ).scalar_one()
                    account_id, version_id = proc.account_id, proc.current_version_id
                at = (datetime.now(UTC) + timedelta(seconds=args.lead)).replace(microsecond=0)
                due_ids = await insert_triggers(
                    sessions, account_id, s.process_id, s.group_id, args.triggers, args.due, at
                )
                for i in range(args.replicas):
                    port = free_port()
                    env = service_env(db_url, nats_url, RPA_SCHEDULER_PORT=str(port))
                    await start_service(services, f"scheduler-{i}", "rpa_scheduler", env, port)
                ready_before_s = (at - datetime.now(UTC)).total_seconds()
                if ready_before_s < 1:
                    raise SystemExit(
                        f"the schedulers were ready {-ready_before_s:.1f} s after T: raise --lead"
                    )
                # From just before T, poll every 20 ms: when each job became visible (committed).
                await asyncio.sleep(max(0.0, ready_before_s - 0.5))
                seen: dict[uuid.UUID, float] = {}
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and len(seen) < args.due:
                    async with sessions() as session:
                        ids = (
                            await session.execute(sa.select(Job.id).where(Job.trigger_id.is_not(None)))
                        ).scalars()
                        t = datetime.now(UTC)
                        for job_id in ids:
                            seen.setdefault(job_id, (t - at).total_seconds())
                    await asyncio.sleep(0.02)
                async with sessions() as session:
                    per_trigger = (
                        await session.execute(
                            sa.select(Job.trigger_id, sa.func.count())
                            .where(Job.trigger_id.is_not(None))
                            .group_by(Job.trigger_id)
                        )
                    ).all()
                for i in range(args.replicas):
                    services.stop(f"scheduler-{i}")
                floor_s = await floor_insert(
                    sessions, account_id, s.process_id, version_id, s.group_id, args.due
                )
            finally:
                await engine.dispose()
    finally:
        services.stop()
    lags = list(seen.values())
    created = lags
    all_created_s = max(lags) if len(created) >= args.due else float("nan")
    wrong = [tid for tid, n in per_trigger if n != 1 or tid not in set(due_ids)]
    out = {
        "triggers": args.triggers,
        "due": args.due,
        "all_created_s": round(all_created_s, 3),
        "fire_lag_p99_s": round(percentile(lags, 99), 3),
        "fire_lag_p50_s": round(percentile(lags, 50), 3),
        "jobs_created": len(created),
        "replicas": args.replicas,
        "floor_insert_s": round(floor_s, 3),
        "ratio": round(all_created_s / floor_s, 2) if floor_s and all_created_s == all_created_s else None,
        "database": db_url.split(":", 1)[0],
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print_table(
        f"Triggers: {args.triggers} schedule triggers, {args.due} due at the same second,"
        f" {args.replicas} scheduler replica(s), {out['database']}",
        [
            ("jobs created for the due triggers", len(created)),
            ("triggers with other than one job", len(wrong)),
            ("all created after T (s)", out["all_created_s"]),
            ("fire lag p50 (s)", out["fire_lag_p50_s"]),
            ("fire lag p99 (s)", out["fire_lag_p99_s"]),
            ("fire lag max (s)", round(max(lags), 3) if lags else float("nan")),
            ("floor: one multi-row insert of the jobs + events (s)", out["floor_insert_s"]),
            ("ratio all created / floor", ratio(all_created_s, floor_s)),
        ],
    )
    print(f"goal: all {args.due} within 2 s; service logs in {services.log_dir}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triggers", type=int, default=10000, help="schedule triggers in all")
    parser.add_argument("--due", type=int, default=1000, help="of which due at the same second")
    parser.add_argument("--lead", type=float, default=60.0, help="seconds from the insert to the due second")
    parser.add_argument("--replicas", type=int, default=1, help="scheduler processes")
    parser.add_argument("--json", type=str, default=None, help="also write the summary as JSON here")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
