"""Statistics equal a hand-computed fixture, bucket by bucket, on both databases.

The fixture: jobs with known creation times, states and run times in two processes on two robots;
robots with known status intervals; a queue whose tasks have a known history. Each expected number
below was worked out by hand from those times (the comments show the sums). Another account's jobs,
robots and tasks at the same times must never count; a role limited to a folder sees only what is in
it; bad parameters are 422 problem+json naming the field.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Job, Queue, RobotStatusInterval, Task, TaskEvent
from rpa_common.models.enums import (
    ActorType,
    JobState,
    PermissionAction,
    PermissionObject,
    RobotStatus,
    TaskEventKind,
    TaskState,
)
from rpa_common.service import ServiceContext
from tests.api.factories import make_folder, make_folder_user, make_process, make_robot

DAY = datetime(2026, 1, 5, tzinfo=UTC)
H10, H11, H12 = DAY + timedelta(hours=10), DAY + timedelta(hours=11), DAY + timedelta(hours=12)
RANGE = {"from": "2026-01-05T10:00:00Z", "to": "2026-01-05T12:00:00Z", "bucket": "hour"}
B10, B11 = "2026-01-05T10:00:00Z", "2026-01-05T11:00:00Z"


def at(hh: int, mm: int, ss: int = 0) -> datetime:
    return DAY + timedelta(hours=hh, minutes=mm, seconds=ss)


S, F, R, ST, P = JobState.SUCCESSFUL, JobState.FAILED, JobState.RUNNING, JobState.STOPPED, JobState.PENDING


async def _fixture(ctx: ServiceContext, account_id: uuid.UUID, folder_id: uuid.UUID | None) -> dict[str, Any]:
    proc_a, (va,) = await make_process(ctx, account_id)
    proc_b, (vb,) = await make_process(ctx, account_id, folder_id=folder_id)
    r1 = await make_robot(ctx, account_id)
    r2 = await make_robot(ctx, account_id, folder_id=folder_id)
    r3 = await make_robot(ctx, account_id)
    a, b = (proc_a.id, va.id), (proc_b.id, vb.id)
    # (process, robot, state, created, run time in seconds or None)
    jobs = [
        (a, r1.id, S, at(10, 5), 10),
        (a, r1.id, S, at(10, 10), 20),
        (a, r2.id, F, at(10, 20), 40),
        (a, r2.id, R, at(10, 30), None),
        (b, r1.id, ST, at(10, 40), 100),
        (b, None, P, at(10, 50), None),
        (a, r1.id, S, at(11, 0), 30),  # on the boundary: bucket 11:00
        (a, r2.id, S, at(11, 15), 50),
        (b, r2.id, F, at(11, 59, 59), 5),
        (a, r1.id, S, at(9, 59, 59), 1000),  # before the range
        (a, r1.id, S, at(12, 0), 7),  # at `to`: excluded
    ]
    # (robot, status, start, end or None: open)
    intervals = [
        (r1.id, RobotStatus.READY, at(9, 30), at(10, 15)),
        (r1.id, RobotStatus.WORKING, at(10, 15), at(10, 45)),
        (r1.id, RobotStatus.READY, at(10, 45), at(11, 30)),
        (r1.id, RobotStatus.WORKING, at(11, 40), None),
        (r2.id, RobotStatus.WORKING, at(10, 30), at(10, 50)),
        (r3.id, RobotStatus.READY, at(8, 0), at(9, 0)),
    ]
    C, IP, OK, FB, PP, AB = (
        TaskState.CREATED,
        TaskState.IN_PROGRESS,
        TaskState.SUCCESSFUL,
        TaskState.FAILED_BUSINESS,
        TaskState.POSTPONED,
        TaskState.ABANDONED,
    )
    # (state now, history: (at, from, to); from None = created)
    tasks = [
        (OK, [(at(9, 50), None, C), (at(10, 10), C, IP), (at(10, 20), IP, OK)]),
        (FB, [(at(10, 5), None, C), (at(10, 30), C, IP), (at(11, 10), IP, FB)]),
        (C, [(at(10, 40), None, C)]),
        (PP, [(at(11, 20), None, PP)]),
        (IP, [(at(11, 30), None, C), (at(12, 10), C, IP)]),
        (AB, [(at(11, 45), None, C), (at(11, 50), C, AB)]),
    ]

    async def work(session: AsyncSession) -> uuid.UUID:
        for (process_id, version_id), robot_id, state, created, run_s in jobs:
            started = None if state == P else created + timedelta(seconds=30)
            session.add(
                Job(
                    id=uuid.uuid4(),
                    account_id=account_id,
                    process_id=process_id,
                    process_version_id=version_id,
                    robot_id=robot_id,
                    state=state,
                    input_args={},
                    created_at=created,
                    updated_at=created,
                    started_at=started,
                    ended_at=None if run_s is None or started is None else started + timedelta(seconds=run_s),
                )
            )
        for robot_id, status, start, end in intervals:
            session.add(
                RobotStatusInterval(
                    id=uuid.uuid4(),
                    account_id=account_id,
                    robot_id=robot_id,
                    status=status,
                    started_at=start,
                    ended_at=end,
                )
            )
        queue = Queue(id=uuid.uuid4(), account_id=account_id, name=f"q-{uuid.uuid4().hex[:8]}")
        session.add(queue)
        await session.flush()
        for state, history in tasks:
            task = Task(id=uuid.uuid4(), account_id=account_id, queue_id=queue.id, name="t", state=state)
            session.add(task)
            await session.flush()
            for when, from_state, to_state in history:
                session.add(
                    TaskEvent(
                        id=uuid.uuid4(),
                        account_id=account_id,
                        task_id=task.id,
                        at=when,
                        kind=TaskEventKind.CREATED if from_state is None else TaskEventKind.STATE,
                        from_state=from_state,
                        to_state=to_state,
                        actor_type=ActorType.SYSTEM,
                    )
                )
        await session.flush()
        return queue.id

    queue_id = await run_in_transaction(ctx.sessions, work)
    return {
        "a": str(proc_a.id),
        "b": str(proc_b.id),
        "r1": str(r1.id),
        "r2": str(r2.id),
        "queue": str(queue_id),
    }


async def _get(client: httpx.AsyncClient, path: str, headers: dict[str, str], **params: str) -> Any:
    resp = await client.get(f"/api/v1/statistics/{path}", params={**RANGE, **params}, headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_statistics_equal_the_hand_computed_fixture(client, tenant, other_tenant) -> None:  # type: ignore[no-untyped-def]
    ctx = tenant.ctx
    folder = await make_folder(ctx, tenant.account_id)
    ids = await _fixture(ctx, tenant.account_id, folder.id)
    await _fixture(ctx, other_tenant.account_id, None)  # the same times in another account: never counted
    h = tenant.headers
    a, b, r1, r2 = ids["a"], ids["b"], ids["r1"], ids["r2"]

    states = await _get(client, "jobs", h, group="process")
    assert states["buckets"] == [B10, B11]
    assert states["from"] == B10 and states["group"] == "process"
    got = {(r["bucket"], r["process_id"]): (r["counts"], r["total"]) for r in states["rows"]}
    assert got == {
        (B10, a): ({"Successful": 2, "Failed": 1, "Running": 1}, 4),
        (B10, b): ({"Stopped": 1, "Pending": 1}, 2),
        (B11, a): ({"Successful": 2}, 2),
        (B11, b): ({"Failed": 1}, 1),
    }
    by_robot = await _get(client, "jobs", h, group="robot")
    got = {(r["bucket"], r["robot_id"]): r["total"] for r in by_robot["rows"]}
    assert got == {(B10, r1): 3, (B10, r2): 2, (B10, None): 1, (B11, r1): 1, (B11, r2): 2}

    rates = await _get(client, "jobs/success-rate", h, group="process")
    got = {
        (r["bucket"], r["process_id"]): (r["finished"], r["successful"], r["success_rate"])
        for r in rates["rows"]
    }
    assert got == {
        (B10, a): (3, 2, round(2 / 3, 6)),
        (B10, b): (1, 0, 0.0),  # Stopped is finished, not successful
        (B11, a): (2, 2, 1.0),
        (B11, b): (1, 0, 0.0),
    }
    rates = await _get(client, "jobs/success-rate", h, group="robot")
    got = {(r["bucket"], r["robot_id"]): (r["finished"], r["successful"]) for r in rates["rows"]}
    assert got == {(B10, r1): (3, 2), (B10, r2): (1, 0), (B11, r1): (1, 1), (B11, r2): (2, 1)}

    # Percentiles interpolate: p of n sorted values sits at position p * (n - 1).
    durations = await _get(client, "jobs/durations", h, group="process")
    got = {(r["bucket"], r["process_id"]): (r["jobs"], r["p50_s"], r["p95_s"]) for r in durations["rows"]}
    assert got == {
        (B10, a): (3, 20.0, 38.0),  # [10, 20, 40]: 1.9 -> 20 + 0.9 * 20
        (B10, b): (1, 100.0, 100.0),
        (B11, a): (2, 40.0, 49.0),  # [30, 50]: 0.95 -> 30 + 0.95 * 20
        (B11, b): (1, 5.0, 5.0),
    }
    durations = await _get(client, "jobs/durations", h, group="robot")
    got = {(r["bucket"], r["robot_id"]): (r["jobs"], r["p50_s"], r["p95_s"]) for r in durations["rows"]}
    assert got == {
        (B10, r1): (3, 20.0, 92.0),  # [10, 20, 100]: 20 + 0.9 * 80
        (B10, r2): (1, 40.0, 40.0),
        (B11, r1): (1, 30.0, 30.0),
        (B11, r2): (2, 27.5, 47.75),  # [5, 50]
    }

    use = await _get(client, "robots/utilisation", h)
    got = {
        (r["bucket"], r["robot_id"]): (r["connected_s"], r["working_s"], r["utilisation"])
        for r in use["rows"]
    }
    assert got == {
        # r1 10:00-11:00: Ready 15 min (clipped at 10:00) + Working 30 + Ready 15.
        (B10, r1): (3600.0, 1800.0, 0.5),
        # r1 11:00-12:00: Ready 30 min, disconnected 10, Working 20 (open, clipped at the range's end).
        (B11, r1): (3000.0, 1200.0, 0.4),
        (B10, r2): (1200.0, 1200.0, 1.0),
    }

    figures = await _get(client, "queues", h)
    got = {
        (r["bucket"], r["queue_id"]): (r["added"], r["ended"], r["successful"], r["backlog"])
        for r in figures["rows"]
    }
    assert got == {
        # Added 10:05, 10:40; ended Successful 10:20; waiting at 11:00: the one added at 10:40.
        (B10, ids["queue"]): (2, 1, 1, 1),
        # Added 11:20 (Postponed), 11:30, 11:45; ended 11:10 (Failed) and 11:50 (Abandoned); waiting at
        # 12:00: the 10:40, 11:20 and 11:30 ones (the last taken only at 12:10).
        (B11, ids["queue"]): (3, 2, 0, 3),
    }

    day = await _get(
        client, "jobs", h, **{"from": "2026-01-05T06:30:00Z", "to": "2026-01-06T00:00:00Z", "bucket": "day"}
    )
    assert day["buckets"] == ["2026-01-05T06:30:00Z"]  # a partial first bucket starts at `from`
    got = {r["process_id"]: r["total"] for r in day["rows"]}
    assert got == {a: 8, b: 3}


async def test_a_folder_role_counts_only_its_folder(client, tenant) -> None:  # type: ignore[no-untyped-def]
    ctx = tenant.ctx
    folder = await make_folder(ctx, tenant.account_id)
    ids = await _fixture(ctx, tenant.account_id, folder.id)
    _, h = await make_folder_user(
        ctx, tenant.account_id, [folder.id], [(PermissionObject.STATISTICS, PermissionAction.READ)]
    )
    # Objects in no folder (process a, robot r1, the queue) count for every role.
    states = await _get(client, "jobs", h, group="process")
    assert {r["process_id"] for r in states["rows"]} == {ids["a"], ids["b"]}
    use = await _get(client, "robots/utilisation", h)
    assert {r["robot_id"] for r in use["rows"]} == {ids["r1"], ids["r2"]}
    assert (await _get(client, "queues", h))["rows"] != []
    # A role of another folder sees only those: nothing of the folder's process b and robot r2.
    elsewhere = await make_folder(ctx, tenant.account_id)
    _, other = await make_folder_user(
        ctx, tenant.account_id, [elsewhere.id], [(PermissionObject.STATISTICS, PermissionAction.READ)]
    )
    states = await _get(client, "jobs", other, group="process")
    assert {r["process_id"] for r in states["rows"]} == {ids["a"]}
    use = await _get(client, "robots/utilisation", other)
    assert {r["robot_id"] for r in use["rows"]} == {ids["r1"]}

    _, nothing = await make_folder_user(ctx, tenant.account_id, [folder.id], [])
    resp = await client.get("/api/v1/statistics/jobs", params=RANGE, headers=nothing)
    assert resp.status_code == 403
    assert "statistics:read" in resp.json()["detail"]


async def test_bad_parameters_are_422_naming_the_field(client, tenant) -> None:  # type: ignore[no-untyped-def]
    h = tenant.headers
    cases = [
        ({"from": "2026-01-05T12:00:00Z", "to": "2026-01-05T10:00:00Z"}, "from"),
        ({"from": "2026-01-05T10:00:00Z", "to": "2026-01-05T10:00:00Z"}, "to"),
        ({"bucket": "week"}, "bucket"),
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-02-02T00:00:00Z", "bucket": "hour"}, "to"),
        ({"from": "2025-01-01T00:00:00Z", "to": "2026-01-03T00:00:00Z", "bucket": "day"}, "to"),
        ({"group": "queue"}, "group"),
        ({"from": "yesterday"}, "from"),
        ({"from": None}, "from"),
        ({"from": "0001-01-01T00:00:00Z"}, "from"),
        ({"to": "9999-12-31T23:59:59Z", "from": "9999-12-01T00:00:00Z"}, "from"),
    ]
    for change, field in cases:
        params = {k: v for k, v in {**RANGE, **change}.items() if v is not None}
        for path in ("jobs", "jobs/success-rate", "jobs/durations", "robots/utilisation", "queues"):
            if "group" in change and not path.startswith("jobs"):
                continue
            resp = await client.get(f"/api/v1/statistics/{path}", params=params, headers=h)
            assert resp.status_code == 422, (path, change, resp.text)
            assert resp.headers["content-type"] == "application/problem+json"
            assert field in {e["field"] for e in resp.json()["errors"]}, (path, change, resp.text)
