"""Robot log lines end to end: acknowledged lines survive a gateway crash; the live tail (SSE) of a
job shows its lines while it runs and resumes with ``Last-Event-ID``.

Real gateway, scheduler and API processes, a real robot (or a WebSocket speaking the real protocol
where the test must know exactly what was acknowledged), both databases.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from rpa_protocol import Ack, Hello, LogBatch, LogEntry, Welcome, encode, parse_gateway_frame
from tests.e2e.conftest import API, Api, Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def _all_lines(api: Api, query: str) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await api.call(
            "GET", f"/logs?order=asc&limit=1000&{query}" + (f"&cursor={cursor}" if cursor else "")
        )
        lines += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return lines


async def test_acknowledged_log_lines_survive_a_gateway_kill(api: Api, stack: Stack) -> None:
    gateway = stack.service("gateway")
    await stack.start(gateway)
    robot_id, key = await api.robot()
    ws = await connect(gateway.ws_url, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=10)
    await ws.send(encode(Hello(protocol=1, robot_version="t", machine="m", capabilities=["jobs", "logs"])))
    assert isinstance(parse_gateway_frame(await asyncio.wait_for(ws.recv(), 10)), Welcome)
    levels = ("Debug", "Info", "Warning", "Error", "Critical")
    sent: list[str] = []
    batches = 8
    for seq in range(1, batches + 1):
        entries = [
            LogEntry(
                id=uuid.uuid4(),
                level=levels[n % 5],  # type: ignore[arg-type]
                message=f"batch {seq} line {n}",
                fields={"n": n},
                at=datetime.now(UTC),
            )
            for n in range(250)
        ]
        sent += [str(e.id) for e in entries]
        await ws.send(encode(LogBatch(seq=seq, entries=entries)))
    acked = 0
    async with asyncio.timeout(30):
        while acked < batches:
            frame = parse_gateway_frame(await ws.recv())
            if isinstance(frame, Ack):
                acked = frame.seq
    gateway.kill()  # SIGKILL right after the last ack: nothing flushed on the way out
    await ws.close()
    stored = await _all_lines(api, f"robot_id={robot_id}")
    assert sorted(line["id"] for line in stored) == sorted(sent)
    assert {line["level"] for line in stored} == set(levels)


def _sse_events(lines: list[str]) -> list[dict[str, str]]:
    events, current = [], {}
    for line in lines:
        if not line:
            if current:
                events.append(current)
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            current[name] = value.removeprefix(" ")
    return events


async def _tail(url: str, headers: dict[str, str], seen: list[tuple[float, dict[str, str]]]) -> None:
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(30, read=60)) as client,
        client.stream("GET", url, headers=headers) as r,
    ):
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        pending: list[str] = []
        async for line in r.aiter_lines():
            pending.append(line)
            if line == "":
                for event in _sse_events(pending):
                    seen.append((time.monotonic(), event))
                    if event.get("event") == "end":
                        return
                pending = []


async def test_live_tail_of_a_job_sees_its_lines_while_it_runs(api: Api, stack: Stack) -> None:
    scheduler = stack.service("scheduler")
    gateway = stack.service("gateway")
    live = stack.service("api", RPA_API_WORKERS="1", RPA_LOG_LEVEL="WARNING")
    await stack.start(scheduler, gateway, live)
    robot_id, key = await api.robot()
    stack.robot(gateway.ws_url, key)
    await api.wait_robot(robot_id, "Ready", stack=stack)
    ids_file = stack.dir / "ids.txt"
    count = 30
    job_id = await api.job(
        "hello", robot=robot_id, input_args={"count": count, "delay_s": 0.15, "ids_file": str(ids_file)}
    )
    url = f"{live.http_url}{API}/jobs/{job_id}/logs/stream"
    seen: list[tuple[float, dict[str, str]]] = []
    tail = asyncio.create_task(_tail(url, api.tenant.headers, seen))
    # While the job runs, its lines show up in the tail (each within about a second of being logged).
    while not ids_file.exists() or len(ids_file.read_text().split()) < 5:
        await asyncio.sleep(0.05)
        assert not tail.done(), tail
    logged_at = time.monotonic()
    while not any(
        e.get("event") == "log" and json.loads(e["data"])["message"] == "hello world #4" for _, e in seen
    ):
        assert time.monotonic() - logged_at < 10, f"line #4 not in the tail: {seen}"
        await asyncio.sleep(0.05)
    assert (await api.get_job(job_id))["state"] == "Running"  # seen live, not after the end
    await asyncio.wait_for(tail, 60)
    job = await api.wait_job(job_id, stack=stack)
    assert job["state"] == "Successful"
    logs = [e for _, e in seen if e.get("event") == "log"]
    assert seen[-1][1]["event"] == "end"
    hello = [
        json.loads(e["data"])["id"] for e in logs if json.loads(e["data"])["message"].startswith("hello")
    ]
    assert hello == ids_file.read_text().split()  # every line once, in order
    assert len({e["id"] for e in logs}) == len(logs)

    # Resume after the 10th line: the rest, then the end (the job is over).
    resumed: list[tuple[float, dict[str, str]]] = []
    await asyncio.wait_for(_tail(url, {**api.tenant.headers, "Last-Event-ID": logs[9]["id"]}, resumed), 30)
    assert [e["data"] for _, e in resumed if e.get("event") == "log"] == [e["data"] for e in logs[10:]]
    # Another account's job is a 404; a bad Last-Event-ID a 422 naming it.
    async with httpx.AsyncClient() as client:
        r = await client.get(url, headers={**api.tenant.headers, "Last-Event-ID": "garbage"})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "Last-Event-ID"
        r = await client.get(
            f"{live.http_url}{API}/jobs/{uuid.uuid4()}/logs/stream", headers=api.tenant.headers
        )
        assert r.status_code == 404


async def test_a_robot_whose_lines_are_not_acknowledged_blocks_its_script_then_catches_up(
    api: Api, stack: Stack
) -> None:
    """Backpressure on the robot's side: with the gateway gone, the robot holds at most
    ``--log-buffer-lines`` unacknowledged lines, plus what the pipe and its read buffer hold (about
    2 MB), so the script's ``sdk.log`` blocks instead of the journal growing; with a gateway back,
    every line is stored once. Lines of about 1 KB here, so those buffers hold about 2,000."""
    scheduler = stack.service("scheduler", RPA_JOB_LEASE_S="60")
    gateway = stack.service("gateway", RPA_JOB_LEASE_S="60")
    await stack.start(scheduler, gateway)
    robot_id, key = await api.robot()
    stack.robot(gateway.ws_url, key, "--log-buffer-lines", "300")
    await api.wait_robot(robot_id, "Ready", stack=stack)
    ids_file = stack.dir / "ids.txt"
    count = 6000
    name = "x" * 1000
    job_id = await api.job(
        "hello",
        robot=robot_id,
        input_args={"name": name, "count": count, "delay_s": 0.001, "ids_file": str(ids_file)},
    )
    await api.wait_job(job_id, "Running", stack=stack)
    while not ids_file.exists() or len(ids_file.read_text().split()) < 100:
        await asyncio.sleep(0.02)
    gateway.kill()
    # The script goes on until the robot's bound and buffers are full, then blocks: the count of
    # lines it logged stops growing (for 3 s on end), far from the end.
    last, still_since, deadline = -1, time.monotonic(), time.monotonic() + 60
    while time.monotonic() - still_since < 3:
        assert time.monotonic() < deadline, "the script never blocked"
        now = len(ids_file.read_text().split())
        if now != last:
            last, still_since = now, time.monotonic()
        await asyncio.sleep(0.2)
    assert last < 100 + 300 + 2300, last  # the bound, plus what the pipe and the reader hold
    await stack.restart(gateway)
    job = await api.wait_job(job_id, timeout=90, stack=stack)
    assert job["state"] == "Successful", job
    logged = ids_file.read_text().split()
    assert len(logged) == count
    # The job's end and its last log frames are committed by different writers of the gateway (log
    # batches have queues of their own): the last lines may become queryable just after the end.
    deadline = time.monotonic() + 30
    while True:
        stored = await _all_lines(api, f"job_id={job_id}&text=hello%20xxx")
        if len(stored) >= count or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert sorted(line["id"] for line in stored) == sorted(logged)
