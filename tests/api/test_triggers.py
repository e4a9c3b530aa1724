"""Triggers through the API: CRUD of every kind with validation (a clear 4xx naming the field,
nothing written), the webhook (bad signature: 401 and no job; good: a job with the body's arguments;
a replay: no second job), test fire, preview, fire history, CSV export/import, audit, NATS."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime
from typing import Any

import httpx
import nats
import sqlalchemy as sa

from rpa_api.triggers import webhook
from rpa_common.models import AuditRecord, Job, Trigger, TriggerFire
from rpa_common.models.enums import JobSource
from rpa_common.nats import subjects
from rpa_common.nats.messages import TriggerChanged
from tests.api.factories import make_group, make_process, make_robot
from tests.conftest import NATS_URL, Tenant

TRIGGERS = "/api/v1/triggers"


async def _count(tenant: Tenant, model: Any, *where: Any) -> int:
    async with tenant.ctx.sessions() as session:
        return int(await session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0)


async def _jobs_of(tenant: Tenant, trigger_id: str) -> list[Job]:
    async with tenant.ctx.sessions() as session:
        rows = await session.execute(sa.select(Job).where(Job.trigger_id == uuid.UUID(trigger_id)))
        return list(rows.scalars())


async def _setup(tenant: Tenant) -> tuple[str, str]:
    process, _ = await make_process(tenant.ctx, tenant.account_id)
    robot = await make_robot(tenant.ctx, tenant.account_id)
    return str(process.id), str(robot.id)


async def create(client: httpx.AsyncClient, tenant: Tenant, **body: Any) -> httpx.Response:
    body.setdefault("name", f"trig-{uuid.uuid4().hex[:8]}")
    return await client.post(TRIGGERS, json=body, headers=tenant.headers)


async def test_crud_of_every_kind_audited_and_announced(client: httpx.AsyncClient, tenant: Tenant) -> None:
    process_id, robot_id = await _setup(tenant)
    source, _ = await make_process(tenant.ctx, tenant.account_id)
    group = await make_group(tenant.ctx, tenant.account_id)
    queue = await client.post(
        "/api/v1/queues", json={"name": f"q-{uuid.uuid4().hex[:6]}"}, headers=tenant.headers
    )
    nc = await nats.connect(NATS_URL)
    sub = await nc.subscribe(subjects.TRIGGER_CHANGED)
    try:
        common = {"process_id": process_id, "robot_id": robot_id, "priority": 3, "input_args": {"a": 1}}
        made = {}
        for kind, extra in (
            ("schedule", {"cron": "0 9 * * 1-5", "time_zone": "Europe/Berlin", "misfire_policy": "skip"}),
            ("queue", {"queue_id": queue.json()["id"], "min_tasks": 5, "max_jobs": 3, "jobs_per_tasks": 10}),
            ("webhook", {"webhook_auth": "secret"}),
            ("robot", {}),
            (
                "job_completed",
                {"source_process_id": str(source.id), "completion_states": ["Successful", "Failed"]},
            ),
        ):
            r = await create(client, tenant, kind=kind, description=f"a {kind}", **common, **extra)
            assert r.status_code == 201, r.text
            made[kind] = r.json()
            assert r.json()["priority"] == 3 and r.json()["input_args"] == {"a": 1} and r.json()["enabled"]
        assert made["schedule"]["next_fire_at"] is not None and made["queue"]["next_fire_at"] is None
        assert made["queue"]["jobs_per_tasks"] == 10 and made["queue"]["max_jobs"] == 3
        assert made["job_completed"]["completion_states"] == ["Successful", "Failed"]
        assert made["webhook"]["webhook_secret"].startswith("whs_")
        assert made["schedule"]["webhook_secret"] is None
        # The secret is shown once: not in a read, nor in a list, nor in the audit.
        got = await client.get(f"{TRIGGERS}/{made['webhook']['id']}", headers=tenant.headers)
        assert got.status_code == 200 and "webhook_secret" not in got.json()
        listed = await client.get(TRIGGERS, params={"kind": "webhook"}, headers=tenant.headers)
        assert [t["id"] for t in listed.json()["items"]] == [made["webhook"]["id"]]
        assert made["webhook"]["webhook_secret"] not in listed.text

        tid = made["schedule"]["id"]
        r = await client.patch(
            f"{TRIGGERS}/{tid}",
            json={"interval_s": 60, "enabled": False, "robot_group_id": str(group.id)},
            headers=tenant.headers,
        )
        assert r.status_code == 200, r.text
        assert r.json()["cron"] is None and r.json()["interval_s"] == 60 and r.json()["enabled"] is False
        assert r.json()["robot_id"] is None and r.json()["robot_group_id"] == str(group.id)
        assert r.json()["next_fire_at"] is None  # disabled
        r = await client.delete(f"{TRIGGERS}/{made['robot']['id']}", headers=tenant.headers)
        assert r.status_code == 204
        assert (
            await client.get(f"{TRIGGERS}/{made['robot']['id']}", headers=tenant.headers)
        ).status_code == 404

        changes = []
        deadline = time.monotonic() + 10
        while len(changes) < 7 and time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=2)
            except nats.errors.TimeoutError:
                break
            m = TriggerChanged.decode(msg.data)
            if m.account_id == tenant.account_id:
                changes.append((str(m.trigger_id), m.change))
        assert (tid, "updated") in changes and (made["robot"]["id"], "deleted") in changes
        assert sum(1 for _, c in changes if c == "created") == 5
    finally:
        await nc.close()

    async with tenant.ctx.sessions() as session:
        audits = (
            await session.execute(
                sa.select(AuditRecord.action, AuditRecord.object_id, AuditRecord.changes).where(
                    AuditRecord.object_type == "trigger", AuditRecord.account_id == tenant.account_id
                )
            )
        ).all()
    assert sorted(a.action for a in audits) == ["create"] * 5 + ["delete", "update"]
    assert made["webhook"]["webhook_secret"] not in json.dumps([a.changes for a in audits])
    assert all("input_args" not in (a.changes or {}) for a in audits)


async def test_invalid_definitions_are_4xx_naming_the_field_and_write_nothing(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    process_id, robot_id = await _setup(tenant)
    foreign_robot = await make_robot(other_tenant.ctx, other_tenant.account_id)
    foreign_process, _ = await make_process(other_tenant.ctx, other_tenant.account_id)
    foreign_group = await make_group(other_tenant.ctx, other_tenant.account_id)
    base = {"kind": "schedule", "process_id": process_id, "robot_id": robot_id, "cron": "0 9 * * *"}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"cron": "61 * * * *"}, 422, "cron"),
        ({"cron": "not a cron"}, 422, "cron"),
        ({"time_zone": "Mars/Olympus"}, 422, "time_zone"),
        ({"robot_id": str(foreign_robot.id)}, 404, "robot_id"),
        ({"robot_id": None, "robot_group_id": str(foreign_group.id)}, 404, "robot_group_id"),
        ({"process_id": str(foreign_process.id)}, 404, "process_id"),
        ({"robot_id": None}, 422, "robot_id"),
        ({"interval_s": 60}, 422, "interval_s"),
        ({"queue_id": str(uuid.uuid4())}, 404, "queue_id"),
        ({"calendar_id": str(uuid.uuid4())}, 404, "calendar_id"),
        ({"kind": "queue", "cron": None}, 422, "queue_id"),
        ({"kind": "job_completed", "cron": None}, 422, "source_process_id"),
    ]
    for change, status, field in cases:
        r = await create(client, tenant, **{**base, **change})
        assert r.status_code == status, (change, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        fields = [e.get("field") or e.get("loc", [None])[-1] for e in r.json().get("errors", [])]
        assert field in fields or field in json.dumps(r.json()), (change, r.json())
    assert await _count(tenant, Trigger, Trigger.account_id == tenant.account_id) == 0
    assert (
        await _count(
            tenant,
            AuditRecord,
            AuditRecord.object_type == "trigger",
            AuditRecord.account_id == tenant.account_id,
        )
        == 0
    )

    ok = await create(client, tenant, **base)
    assert ok.status_code == 201
    before = ok.json()
    for change, status, field in (
        ({"cron": "* * *"}, 422, "cron"),
        ({"time_zone": "Nowhere/Else"}, 422, "time_zone"),
        ({"robot_id": str(foreign_robot.id)}, 404, "robot_id"),
    ):
        r = await client.patch(f"{TRIGGERS}/{before['id']}", json=change, headers=tenant.headers)
        assert r.status_code == status, (change, r.text)
        assert field in json.dumps(r.json())
    after = await client.get(f"{TRIGGERS}/{before['id']}", headers=tenant.headers)
    assert after.json() == {k: v for k, v in before.items() if k != "webhook_secret"}
    # Another account's trigger is unknown.
    assert (await client.get(f"{TRIGGERS}/{before['id']}", headers=other_tenant.headers)).status_code == 404


async def test_webhook_hmac_and_secret(client: httpx.AsyncClient, tenant: Tenant) -> None:
    process_id, robot_id = await _setup(tenant)
    r = await create(
        client, tenant, kind="webhook", process_id=process_id, robot_id=robot_id, input_args={"x": 1, "y": 2}
    )
    assert r.status_code == 201, r.text
    hook, secret = r.json(), r.json()["webhook_secret"]
    url = f"{TRIGGERS}/{hook['id']}/webhook"
    body = json.dumps({"y": 20, "invoice": "A-17"}).encode()
    stamp = str(int(time.time()))
    good = {
        "content-type": "application/json",
        "X-RPA-Timestamp": stamp,
        "X-RPA-Signature": webhook.signature(secret, stamp, body),
    }

    for headers in (
        {**good, "X-RPA-Signature": webhook.signature("whs_wrong", stamp, body)},
        {**good, "X-RPA-Signature": "sha256=00"},
        {k: v for k, v in good.items() if k != "X-RPA-Signature"},
        {
            **good,
            "X-RPA-Timestamp": str(int(stamp) - 3600),
            "X-RPA-Signature": webhook.signature(secret, str(int(stamp) - 3600), body),
        },
    ):
        bad = await client.post(url, content=body, headers=headers)
        assert bad.status_code == 401, bad.text
        assert bad.headers["content-type"].startswith("application/problem+json")
    # The right signature over another body is wrong too.
    tampered = await client.post(url, content=body.replace(b"A-17", b"A-18"), headers=good)
    assert tampered.status_code == 401
    assert await _jobs_of(tenant, hook["id"]) == []

    ok = await client.post(url, content=body, headers=good)
    assert ok.status_code == 202, ok.text
    assert ok.json()["created"] is True
    [job] = await _jobs_of(tenant, hook["id"])
    assert str(job.id) == ok.json()["job_id"] and job.input_args == {"x": 1, "y": 20, "invoice": "A-17"}
    assert job.source == JobSource.TRIGGER
    async with tenant.ctx.sessions() as session:
        [audit] = (
            await session.execute(
                sa.select(AuditRecord).where(
                    AuditRecord.kind == "webhook", AuditRecord.object_id == hook["id"]
                )
            )
        ).scalars()
    assert audit.action == "fire" and audit.changes == {
        "job_id": str(job.id),
        "input_arg_names": ["invoice", "y"],
    }
    # The same signed request again (a replay within the window) makes no second job.
    again = await client.post(url, content=body, headers=good)
    assert again.status_code == 202 and again.json()["created"] is False
    assert len(await _jobs_of(tenant, hook["id"])) == 1

    # Rotation: the old secret stops working; secret mode with an idempotency key.
    r = await client.patch(
        f"{TRIGGERS}/{hook['id']}", json={"webhook_auth": "secret"}, headers=tenant.headers
    )
    assert r.status_code == 200, r.text
    rotated = await client.post(f"{TRIGGERS}/{hook['id']}/webhook-secret", headers=tenant.headers)
    assert rotated.status_code == 200
    new = rotated.json()["webhook_secret"]
    assert new != secret
    old = await client.post(url, json={}, headers={"X-RPA-Trigger-Secret": secret})
    assert old.status_code == 401
    for _ in range(2):
        r = await client.post(
            url, json={"n": 1}, headers={"X-RPA-Trigger-Secret": new, "Idempotency-Key": "k1"}
        )
        assert r.status_code == 202, r.text
    assert len(await _jobs_of(tenant, hook["id"])) == 2
    # Not a webhook trigger: unknown here. A body that is not an object: 422.
    r = await client.post(
        url, content=b"[1]", headers={"X-RPA-Trigger-Secret": new, "content-type": "application/json"}
    )
    assert r.status_code == 422
    assert (await client.post(f"{TRIGGERS}/{uuid.uuid4()}/webhook", json={})).status_code == 404
    got = await client.get(f"{TRIGGERS}/{hook['id']}", headers=tenant.headers)
    assert got.json()["last_job_id"] is not None and got.json()["last_result"] == "created"


async def test_test_fire_preview_and_fires(client: httpx.AsyncClient, tenant: Tenant) -> None:
    process_id, robot_id = await _setup(tenant)
    r = await create(
        client,
        tenant,
        kind="schedule",
        process_id=process_id,
        robot_id=robot_id,
        cron="30 2 * * *",
        time_zone="Europe/Berlin",
        enabled=False,
    )
    tid = r.json()["id"]
    fired = await client.post(f"{TRIGGERS}/{tid}/test", headers=tenant.headers)
    assert fired.status_code == 201, fired.text
    assert fired.json()["created"] is True
    [job] = await _jobs_of(tenant, tid)
    assert str(job.id) == fired.json()["job_id"]
    fires = await client.get(f"{TRIGGERS}/{tid}/fires", headers=tenant.headers)
    assert fires.status_code == 200
    [entry] = fires.json()["items"]
    assert entry["job_id"] == str(job.id) and entry["job_state"] == "Pending" and entry["result"] == "created"
    got = (await client.get(f"{TRIGGERS}/{tid}", headers=tenant.headers)).json()
    assert got["last_job_id"] == str(job.id) and got["last_fired_at"] is not None

    preview = await client.get(f"{TRIGGERS}/{tid}/preview", params={"n": 5}, headers=tenant.headers)
    assert preview.status_code == 200, preview.text
    times = preview.json()["fire_times"]
    assert len(times) == 5 and times == sorted(times)
    # 02:30 in Berlin is 00:30 or 01:30 UTC, by the season.
    assert all(t[11:16] in ("00:30", "01:30") for t in times)

    # A calendar's non-working days are skipped (weekends, and one holiday).
    cal = await client.post(
        "/api/v1/calendars",
        json={"name": f"cal-{uuid.uuid4().hex[:6]}", "weekend_days": [6, 7], "days": [{"day": "2030-01-01"}]},
        headers=tenant.headers,
    )
    assert cal.status_code == 201, cal.text
    r = await create(
        client,
        tenant,
        kind="schedule",
        process_id=process_id,
        robot_id=robot_id,
        cron="0 12 * * *",
        calendar_id=cal.json()["id"],
    )
    assert r.status_code == 201, r.text
    days = (
        await client.get(f"{TRIGGERS}/{r.json()['id']}/preview", params={"n": 15}, headers=tenant.headers)
    ).json()
    stamps = [datetime.fromisoformat(t) for t in days["fire_times"]]
    assert len(stamps) == 15 and all(t.isoweekday() <= 5 for t in stamps)
    assert datetime.fromisoformat(r.json()["next_fire_at"]) == stamps[0]

    # A process without a version: the fire says why no job.
    bare, _ = await make_process(tenant.ctx, tenant.account_id, versions=0)
    r = await create(client, tenant, kind="robot", process_id=str(bare.id), robot_id=robot_id)
    fired = await client.post(f"{TRIGGERS}/{r.json()['id']}/test", headers=tenant.headers)
    assert fired.json()["created"] is False and "version" in fired.json()["reason"]
    got = (await client.get(f"{TRIGGERS}/{r.json()['id']}", headers=tenant.headers)).json()
    assert got["last_job_id"] is None and "version" in got["last_result"]
    assert (
        await client.get(f"{TRIGGERS}/{r.json()['id']}/preview", headers=tenant.headers)
    ).status_code == 409


async def test_csv_round_trip_and_bad_rows(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    process, _ = await make_process(tenant.ctx, tenant.account_id, name=f"Invoices-{uuid.uuid4().hex[:6]}")
    robot = await make_robot(tenant.ctx, tenant.account_id)
    for body in (
        {
            "kind": "schedule",
            "cron": "0 9 * * 1-5",
            "time_zone": "America/New_York",
            "input_args": {"a": [1, 2]},
        },
        {"kind": "webhook", "description": 'from the ERP, "quoted", with, commas'},
        {"kind": "robot", "priority": 1, "enabled": False},
    ):
        r = await create(client, tenant, process_id=str(process.id), robot_id=str(robot.id), **body)
        assert r.status_code == 201, r.text
    exported = await client.get(f"{TRIGGERS}/export", headers=tenant.headers)
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert "whs_" not in exported.text and process.name in exported.text

    # Into another account, whose process and robot have the same names.
    await make_process(other_tenant.ctx, other_tenant.account_id, name=process.name)
    other_robot = await make_robot(other_tenant.ctx, other_tenant.account_id)
    text = exported.text.replace(robot.name, other_robot.name)
    files = {"file": ("triggers.csv", text.encode(), "text/csv")}
    imported = await client.post(f"{TRIGGERS}/import", files=files, headers=other_tenant.headers)
    assert imported.status_code == 201, imported.text
    assert imported.json()["added"] == 3
    assert [i["webhook_secret"] is not None for i in imported.json()["items"]].count(True) == 1
    again = await client.get(f"{TRIGGERS}/export", headers=other_tenant.headers)
    assert again.text == text

    # Bad rows: line and column, nothing written.
    header = "name,kind,process,robot,cron,time_zone\n"
    ok_row = f"t1,schedule,{process.name},{robot.name},0 9 * * *,UTC\n"
    for body, line, column in (
        (header + ok_row + f"t2,schedule,{process.name},{robot.name},99 9 * * *,UTC\n", 3, "cron"),
        (header + ok_row + f"t2,schedule,{process.name},{robot.name},0 9 * * *,Mars/X\n", 3, "time_zone"),
        (header + ok_row + f"t2,schedule,{process.name},nobody,0 9 * * *,UTC\n", 3, "robot"),
        (header + ok_row + f"t2,sometimes,{process.name},{robot.name},0 9 * * *,UTC\n", 3, "kind"),
        (header + ok_row + ok_row, 3, "name"),
        ("name,kind,process,colour\n", 1, "colour"),
    ):
        r = await client.post(
            f"{TRIGGERS}/import", files={"file": ("t.csv", body.encode(), "text/csv")}, headers=tenant.headers
        )
        assert r.status_code in (409, 422), r.text
        assert r.json()["line"] == line and r.json()["column"] == column, r.json()
        assert f"line {line}" in r.json()["detail"]
    assert await _count(tenant, Trigger, Trigger.account_id == tenant.account_id) == 3


async def test_fire_records_are_per_key(client: httpx.AsyncClient, tenant: Tenant) -> None:
    """Two test fires are two occurrences (two keys), each with its job."""
    process_id, robot_id = await _setup(tenant)
    r = await create(client, tenant, kind="robot", process_id=process_id, robot_id=robot_id)
    tid = r.json()["id"]
    results = await asyncio.gather(
        *(client.post(f"{TRIGGERS}/{tid}/test", headers=tenant.headers) for _ in range(2))
    )
    assert all(x.status_code == 201 for x in results)
    assert await _count(tenant, TriggerFire, TriggerFire.trigger_id == uuid.UUID(tid)) == 2
