"""NATS restarts between a job's claim and its offer: the job still runs, once, seconds later.

Issue #6: a job that went ``Pending -> Starting`` while NATS was down never reached its robot. The
offer was published into the outage and lost, the robot stayed ``Working``, its heartbeats renewed
the job's lease, and nothing recovered. Here the scheduler and the gateway are real processes on a
NATS server of the test's own; NATS is killed, a job is created through the API while it is down
(so the scheduler's sweep claims it during the outage), and NATS starts again. The gateway reaches
NATS through a ``Relay`` the test opens only after the scheduler is back, so the scheduler's own
reconnection (and anything it held for it) always comes first: the offer is lost every time, not
one time in three. The lease is long (20 s) so that only the scheduler's re-sent offer can save the
job within the test's seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Api, Service, Stack, history, job_events
from tests.e2e.nats_outage import NatsServer, Relay
from tests.support import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

RESEND = {"RPA_JOB_LEASE_S": "20", "RPA_DISPATCH_CONFIRM_TIMEOUT_S": "1", "RPA_DISPATCH_MAX_OFFERS": "20"}
"""A lease far longer than the test waits, a short confirmation deadline, and enough offers that
the job is offered again rather than planned again (a re-plan would also save it, as attempt 2)."""


async def _nats_connected(svc: Service, timeout: float = 15) -> None:
    """The service's ``/readyz`` says NATS answers (it checks its own NATS connection)."""

    async def check() -> bool:
        async with httpx.AsyncClient() as c:
            try:
                r = await c.get(f"{svc.http_url}/readyz", timeout=1)
            except httpx.HTTPError:
                return False
            return r.status_code == 200

    await eventually(check, timeout, f"{svc.name} connected to NATS again")


async def _outage(nats: NatsServer, relay: Relay, during: float = 0.0) -> None:
    nats.stop()
    await relay.shut()
    if during:
        await asyncio.sleep(during)


async def _recover(nats: NatsServer, relay: Relay, scheduler: Service, gateway: Service) -> float:
    """NATS back, the scheduler reconnected (and flushed what it held) before the gateway: the time
    NATS returned."""
    nats.start()
    back = time.monotonic()
    await _nats_connected(scheduler)
    await asyncio.sleep(1.0)  # whatever the scheduler held for NATS went out, to no subscriber
    await relay.open()
    await _nats_connected(gateway)
    return back


async def _services(stack: Stack, nats: NatsServer, relay: Relay, **settings: str) -> tuple[Service, Service]:
    scheduler = stack.service("scheduler", settings={**RESEND, **settings}, RPA_NATS_URL=nats.url)
    gateway = stack.service("gateway", settings={**RESEND, **settings}, RPA_NATS_URL=relay.url)
    await stack.start(scheduler, gateway)
    return scheduler, gateway


async def test_a_job_claimed_during_a_nats_outage_completes_once_after_nats_returns(
    api: Api, stack: Stack, tmp_path: Path
) -> None:
    nats = NatsServer(tmp_path / "nats-server.log")
    nats.start()
    relay = Relay(nats.port)
    await relay.open()
    try:
        scheduler, gateway = await _services(stack, nats, relay)
        robot_id, key = await api.robot()
        stack.robot(gateway.ws_url, key)
        await api.wait_robot(robot_id, "Ready", stack=stack)
        await api.publish("hello")

        await _outage(nats, relay)
        ids_file = stack.dir / "ids.txt"
        job_id = await api.job("hello", robot=robot_id, input_args={"count": 2, "ids_file": str(ids_file)})
        # The scheduler's sweep claims it while NATS is down: its offer goes nowhere.
        await api.wait_job(job_id, "Starting", timeout=10, stack=stack)
        await asyncio.sleep(0.5)
        back = await _recover(nats, relay, scheduler, gateway)

        job = await api.wait_job(job_id, timeout=15, stack=stack)
        took = time.monotonic() - back
        assert job["state"] == "Successful", f"{job['error']}\n{stack.report()}"
        assert took < 10, f"the job ended {took:.1f} s after NATS returned"
        assert job["attempt"] == 1  # offered again, not planned again: the same attempt ran
        assert history(job) == [
            (None, "Pending"),
            ("Pending", "Starting"),
            ("Starting", "Running"),
            ("Running", "Successful"),
        ]
        assert len(ids_file.read_text().split()) == 2  # the script ran once
        # Healed by the scheduler's re-offer, or first by the gateway's reconciliation or a publish
        # retried after the outage: whichever came first, one of them did it.
        healed_by = ("dispatch.offer_resent", "nats.publish_retried", "reconcile.offer_resent")
        logs = scheduler.output(tail=200_000) + gateway.output(tail=200_000)
        assert any(event in logs for event in healed_by), stack.report()
    finally:
        await relay.shut()
        nats.stop()


async def test_ten_robots_through_several_nats_restarts_every_job_runs_once(
    api: Api, stack: Stack, tmp_path: Path
) -> None:
    nats = NatsServer(tmp_path / "nats-server.log")
    nats.start()
    relay = Relay(nats.port)
    await relay.open()
    try:
        # Heartbeats of 1 s x 3 misses: no robot is marked Disconnected by the machine being busy.
        scheduler, gateway = await _services(stack, nats, relay, RPA_HEARTBEAT_INTERVAL_S="1")
        robots = [await api.robot() for _ in range(10)]
        for _, key in robots:
            stack.robot(gateway.ws_url, key)
        for robot_id, _ in robots:
            await api.wait_robot(robot_id, "Ready", stack=stack)
        await api.publish("hello")

        job_ids: list[str] = []

        async def some_jobs(n: int) -> None:
            for i in range(n):
                robot_id = robots[(len(job_ids) + i) % len(robots)][0]
                job_ids.append(await api.job("hello", robot=robot_id, input_args={"count": 1}))

        last_back = 0.0
        for _ in range(4):
            await some_jobs(10)
            await _outage(nats, relay, during=0.3)
            await some_jobs(10)  # claimed during the outage, their offers lost
            await asyncio.sleep(1.0)
            last_back = await _recover(nats, relay, scheduler, gateway)
        await some_jobs(10)

        async def all_final() -> bool:
            page = await api.call("GET", "/jobs", 200, params={"state": "Successful", "limit": 1})
            return int(page["total"]) >= len(job_ids)

        try:
            await eventually(all_final, 30, "every job Successful")
        except AssertionError:
            states = Counter([(await api.get_job(j))["state"] for j in job_ids])
            raise AssertionError(f"jobs by state: {dict(states)}\n{stack.report()}") from None
        assert time.monotonic() - last_back < 30
        events = await job_events(api.ctx, job_ids)
        for job_id, evs in events.items():
            runs = [e for e in evs if e.to_state == "Running"]
            assert len(runs) == 1, (
                f"job {job_id} ran {len(runs)} times: {[(e.from_state, e.to_state) for e in evs]}"
            )
            assert evs[-1].to_state == "Successful"
    finally:
        await relay.shut()
        nats.stop()
