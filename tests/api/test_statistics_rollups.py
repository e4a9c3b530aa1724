"""The statistics over hours the scheduler aggregated equal the same hand-computed fixture, on both
databases: counts and success rates exactly, also for a job that ends after its hour was aggregated
(before and after the next pass); run-time percentiles exactly up to 48 hours and within one
histogram bin (19 %) beyond; two passes at once count nothing twice; the endpoints read the rollups.
Queue figures (throughput and backlog) and robot utilisation are the same from the hourly queue and
robot rollups as from the task history and the status intervals, over whole hours, parts of hours
and ranges ending in the past.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Job, JobRollup, QueueRollup, RobotRollup
from rpa_common.models.base import utcnow
from rpa_common.models.enums import JobState, PermissionAction, PermissionObject
from rpa_common.rollups import BIN_RATIO, rollup_pass
from tests.api.factories import make_folder, make_folder_user
from tests.api.test_statistics import H10, _fixture, _get, at

WIDE = {"from": "2026-01-03T00:00:00Z", "to": "2026-01-08T00:00:00Z", "bucket": "hour"}
DAY = {"from": "2026-01-05T06:30:00Z", "to": "2026-01-06T00:00:00Z", "bucket": "day"}
MONTH = {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z", "bucket": "day"}
"""Whole days: read from the day rows once the rollups exist."""
PARTS = {"from": "2026-01-05T10:30:00Z", "to": "2026-01-05T11:40:00Z", "bucket": "hour"}
"""Parts of two hours: the history read on both sides of whole hours, and after the range."""


async def _answers(client: Any, h: dict[str, str]) -> dict[str, Any]:
    out = {}
    for path in ("jobs", "jobs/success-rate", "jobs/durations"):
        for group in ("process", "robot"):
            out[f"{path} {group}"] = (await _get(client, path, h, group=group))["rows"]
            out[f"{path} {group} day"] = (await _get(client, path, h, group=group, **DAY))["rows"]
            out[f"{path} {group} wide"] = (await _get(client, path, h, group=group, **WIDE))["rows"]
            out[f"{path} {group} month"] = (await _get(client, path, h, group=group, **MONTH))["rows"]
    for name, span in (("hours", {}), ("day", DAY), ("wide", WIDE), ("month", MONTH), ("parts", PARTS)):
        out[f"queues {name}"] = (await _get(client, "queues", h, **span))["rows"]
        out[f"utilisation {name}"] = (await _get(client, "robots/utilisation", h, **span))["rows"]
    return out


async def _rollup_rows(ctx: Any, account_id: uuid.UUID, process: str) -> dict[str, int]:
    async with ctx.sessions() as session:
        rows = await session.execute(
            sa.select(JobRollup.state, JobRollup.jobs).where(
                JobRollup.account_id == account_id,
                JobRollup.kind == "process",
                JobRollup.key_id == uuid.UUID(process),
                JobRollup.hour == H10,
            )
        )
        return {JobState(r.state).value: int(r.jobs) for r in rows}


async def _queue_row(ctx: Any, account_id: uuid.UUID, queue: str) -> tuple[int, ...] | None:
    async with ctx.sessions() as session:
        row = (
            await session.execute(
                sa.select(
                    QueueRollup.added, QueueRollup.ended, QueueRollup.successful, QueueRollup.delta
                ).where(
                    QueueRollup.account_id == account_id,
                    QueueRollup.queue_id == uuid.UUID(queue),
                    QueueRollup.hour == H10,
                )
            )
        ).one_or_none()
        return None if row is None else tuple(row)


async def _robot_row(ctx: Any, account_id: uuid.UUID, robot: str) -> tuple[float, ...] | None:
    async with ctx.sessions() as session:
        row = (
            await session.execute(
                sa.select(RobotRollup.connected_s, RobotRollup.working_s).where(
                    RobotRollup.account_id == account_id,
                    RobotRollup.robot_id == uuid.UUID(robot),
                    RobotRollup.hour == H10,
                )
            )
        ).one_or_none()
        return None if row is None else tuple(row)


def _same_within_a_bin(exact: list[dict[str, Any]], estimated: list[dict[str, Any]]) -> None:
    assert [(r["bucket"], r["process_id"], r["robot_id"], r["jobs"]) for r in estimated] == [
        (r["bucket"], r["process_id"], r["robot_id"], r["jobs"]) for r in exact
    ]
    for e, g in zip(exact, estimated, strict=True):
        for p in ("p50_s", "p95_s"):
            assert e[p] / BIN_RATIO <= g[p] <= e[p] * BIN_RATIO, (p, e, g)


async def test_rollups_give_the_same_answers_and_see_late_job_ends(client, tenant, other_tenant) -> None:  # type: ignore[no-untyped-def]
    ctx = tenant.ctx
    folder = await make_folder(ctx, tenant.account_id)
    ids = await _fixture(ctx, tenant.account_id, folder.id)
    await _fixture(ctx, other_tenant.account_id, None)
    h = tenant.headers
    a = ids["a"]
    _, limited = await make_folder_user(
        ctx, tenant.account_id, [folder.id], [(PermissionObject.STATISTICS, PermissionAction.READ)]
    )
    live = await _answers(client, h)
    live_limited = await _answers(client, limited)

    # Two scheduler replicas at once: one aggregates each account, the other skips it.
    first, second = await asyncio.gather(rollup_pass(ctx), rollup_pass(ctx))
    assert first.hours + second.hours > 0
    # Hour 10 of process a: its final jobs (2 Successful, 1 Failed); the Running one stays live.
    assert await _rollup_rows(ctx, tenant.account_id, a) == {"Successful": 2, "Failed": 1}
    # Hour 10 of the queue: added 10:05 and 10:40, taken 10:10 and 10:30 (as many waiting after
    # as before), one Successful at 10:20.
    assert await _queue_row(ctx, tenant.account_id, ids["queue"]) == (2, 1, 1, 0)
    assert live["queues month"] != [] and live["queues parts"] != []
    # Hour 10 of robot r2: Working 20 minutes.
    assert await _robot_row(ctx, tenant.account_id, ids["r2"]) == (1200.0, 1200.0)
    assert live["utilisation month"] != [] and live["utilisation parts"] != []

    rolled = await _answers(client, h)
    rolled_limited = await _answers(client, limited)
    for key, rows in live.items():
        if key.startswith("jobs/durations") and key.endswith(("wide", "month")):
            _same_within_a_bin(rows, rolled[key])
            _same_within_a_bin(live_limited[key], rolled_limited[key])
        else:
            assert rolled[key] == rows, key
            assert rolled_limited[key] == live_limited[key], key
    # A single run in a bucket is exact from the histograms too (its shortest and longest).
    wide = {
        (r["bucket"], r["process_id"]): (r["p50_s"], r["p95_s"])
        for r in rolled["jobs/durations process wide"]
    }
    assert wide[("2026-01-05T10:00:00Z", ids["b"])] == (100.0, 100.0)

    # The Running job of 10:30 (process a, robot r2) ends now, in an hour aggregated already.
    async def end_it(session: AsyncSession) -> None:
        job = (
            await session.execute(
                sa.select(Job).where(
                    Job.account_id == tenant.account_id,
                    Job.state == JobState.RUNNING,
                    Job.created_at == at(10, 30),
                )
            )
        ).scalar_one()
        job.state = JobState.SUCCESSFUL
        job.ended_at = job.started_at + timedelta(seconds=60)  # type: ignore[operator]
        job.updated_at = utcnow()

    await run_in_transaction(ctx.sessions, end_it)

    async def check_after_the_late_end() -> None:
        states = await _get(client, "jobs", h, group="process")
        got = {r["process_id"]: r["counts"] for r in states["rows"] if r["bucket"] == "2026-01-05T10:00:00Z"}
        assert got[a] == {"Successful": 3, "Failed": 1}
        rates = await _get(client, "jobs/success-rate", h, group="robot")
        got_r = {(r["bucket"], r["robot_id"]): (r["finished"], r["successful"]) for r in rates["rows"]}
        assert got_r[("2026-01-05T10:00:00Z", ids["r2"])] == (2, 1)
        durations = await _get(client, "jobs/durations", h, group="process")
        got_d = {
            (r["bucket"], r["process_id"]): (r["jobs"], r["p50_s"], r["p95_s"]) for r in durations["rows"]
        }
        # [10, 20, 40, 60]: 0.5 -> 1.5 -> 30; 0.95 -> 2.85 -> 40 + 0.85 * 20
        assert got_d[("2026-01-05T10:00:00Z", a)] == (4, 30.0, 57.0)
        day = await _get(client, "jobs", h, group="process", **DAY)
        assert {r["process_id"]: r["counts"].get("Running", 0) for r in day["rows"]} == {a: 0, ids["b"]: 0}
        # The whole month by day (day rows) counts what the day's hours count (hourly rows).
        hours = await _get(
            client,
            "jobs",
            h,
            group="process",
            **{"from": "2026-01-05T00:00:00Z", "to": "2026-01-06T00:00:00Z"},
        )
        summed: dict[str, dict[str, int]] = {}
        for r in hours["rows"]:
            for name, n in r["counts"].items():
                summed.setdefault(r["process_id"], {}).setdefault(name, 0)
                summed[r["process_id"]][name] += n
        month = await _get(client, "jobs", h, group="process", **MONTH)
        assert {
            r["process_id"]: r["counts"] for r in month["rows"] if r["bucket"] == "2026-01-05T00:00:00Z"
        } == summed

    await check_after_the_late_end()  # read live: changed after the cut-off
    # The next pass, once the change is older than the margin, takes it into the hour's rows.
    later = utcnow() + timedelta(seconds=ctx.settings.statistics_rollup_margin_s + 60)
    await rollup_pass(ctx, now=later)
    assert await _rollup_rows(ctx, tenant.account_id, a) == {"Successful": 3, "Failed": 1}
    await check_after_the_late_end()
    await rollup_pass(ctx, now=later)  # again: the same rows
    assert await _rollup_rows(ctx, tenant.account_id, a) == {"Successful": 3, "Failed": 1}
    await check_after_the_late_end()

    # The endpoints do read the rollups: a row changed by hand shows.
    async def tamper(kind: str, hour: Any, more: int) -> None:
        async def work(session: AsyncSession) -> None:
            await session.execute(
                sa.update(JobRollup)
                .where(
                    JobRollup.account_id == tenant.account_id,
                    JobRollup.kind == kind,
                    JobRollup.key_id == uuid.UUID(a),
                    JobRollup.hour == hour,
                    JobRollup.state == JobState.FAILED,
                )
                .values(jobs=JobRollup.jobs + more)
            )

        await run_in_transaction(ctx.sessions, work)

    # The queue figures read the queue rollups (a row changed by hand shows) for whole hours only.
    async def tamper_queue(session: AsyncSession) -> None:
        await session.execute(
            sa.update(QueueRollup)
            .where(QueueRollup.account_id == tenant.account_id, QueueRollup.hour == H10)
            .values(added=QueueRollup.added + 100)
        )

    await run_in_transaction(ctx.sessions, tamper_queue)
    by_hour = {r["bucket"]: r["added"] for r in (await _get(client, "queues", h))["rows"]}
    assert by_hour["2026-01-05T10:00:00Z"] == 102
    parts = {r["bucket"]: r["added"] for r in (await _get(client, "queues", h, **PARTS))["rows"]}
    assert parts["2026-01-05T10:30:00Z"] == 1  # half an hour: read from the history

    # Robot utilisation reads the robot rollups the same way.
    async def tamper_robot(session: AsyncSession) -> None:
        await session.execute(
            sa.update(RobotRollup)
            .where(RobotRollup.account_id == tenant.account_id, RobotRollup.hour == H10)
            .values(connected_s=RobotRollup.connected_s + 1000)
        )

    await run_in_transaction(ctx.sessions, tamper_robot)
    use = await _get(client, "robots/utilisation", h)
    got_u = {(r["bucket"], r["robot_id"]): r["connected_s"] for r in use["rows"]}
    assert got_u[("2026-01-05T10:00:00Z", ids["r2"])] == 2200.0
    use = await _get(client, "robots/utilisation", h, **PARTS)
    got_u = {(r["bucket"], r["robot_id"]): r["connected_s"] for r in use["rows"]}
    assert got_u[("2026-01-05T10:30:00Z", ids["r2"])] < 2000.0  # half an hour: read from the intervals

    await tamper("process", H10, 100)
    states = await _get(client, "jobs", h, group="process")
    got = {r["process_id"]: r["counts"] for r in states["rows"] if r["bucket"] == "2026-01-05T10:00:00Z"}
    assert got[a] == {"Successful": 3, "Failed": 101}
    month = await _get(client, "jobs", h, group="process", **MONTH)
    got = {r["process_id"]: r["counts"] for r in month["rows"] if r["bucket"] == "2026-01-05T00:00:00Z"}
    assert got[a]["Failed"] == 1  # the day row, made before the change by hand
    await tamper("process.day", H10.replace(hour=0), 1000)
    month = await _get(client, "jobs", h, group="process", **MONTH)
    got = {r["process_id"]: r["counts"] for r in month["rows"] if r["bucket"] == "2026-01-05T00:00:00Z"}
    assert got[a]["Failed"] == 1001  # ... read for whole days
