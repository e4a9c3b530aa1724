"""License enforcement with real processes: scheduler and gateways with ``RPA_LICENSE_REQUIRED``,
reference robots connecting to them. A robot beyond the seats of its kind is Unlicensed (the API
shows why, the robot is told in its ``welcome``) and gets no work; an expired license gives no
seat; a gateway killed while its robots hold seats gives them back (the heartbeat sweep)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from rpa_common.models.enums import LicenseKind
from tests.e2e.conftest import Api, Child, Service, Stack, eventually
from tests.license_keys import PUBLIC_KEY, issue_key

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

LICENSED = {
    "RPA_LICENSE_REQUIRED": "true",
    "RPA_LICENSE_PUBLIC_KEYS": PUBLIC_KEY,
    # Licensing is about which robot gets work, not leases: a lease that outlasts a loaded machine.
    "RPA_JOB_LEASE_S": "15",
}


async def install(api: Api, kind: LicenseKind, capacity: int, expires_at: datetime | None = None) -> str:
    body = await api.call("POST", "/licenses", 201, json={"key": issue_key(kind, capacity, expires_at)})
    return str(body["id"])


async def told(robot: Child, words: str) -> None:
    async def check() -> bool:
        return f"unlicensed: {words}" in robot.output(20000)

    await eventually(check, 15, f"robot told {words!r}")


async def test_second_robot_beyond_capacity_is_unlicensed_and_gets_no_work(api: Api, stack: Stack) -> None:
    scheduler = stack.service("scheduler", settings=LICENSED)
    gateway = stack.service("gateway", settings=LICENSED)
    await stack.start(scheduler, gateway)
    await install(api, LicenseKind.UNATTENDED, 1)

    first_id, first_key = await api.robot()
    first = stack.robot(gateway.ws_url, first_key)
    await api.wait_robot(first_id, "Ready", stack=stack)
    second_id, second_key = await api.robot()
    second = stack.robot(gateway.ws_url, second_key)
    robot = await api.wait_robot(second_id, "Unlicensed", stack=stack)
    assert robot["status_reason"] == "all 1 Unattended license seats are in use"
    await told(second, "all 1 Unattended license seats are in use")
    licenses = (await api.call("GET", "/licenses", 200))["items"]
    assert [(x["capacity"], x["assigned"], x["in_use"]) for x in licenses] == [(1, 2, 1)]

    # Work for the group goes to the licensed robot; work for the unlicensed one waits.
    group = await api.group([first_id, second_id])
    held = await api.job("hello", robot=second_id, input_args={"count": 1})
    for _ in range(2):
        done = await api.wait_job(await api.job("hello", group=group, input_args={"count": 1}), stack=stack)
        assert done["state"] == "Successful" and done["robot_id"] == first_id
    await asyncio.sleep(2)
    job = await api.get_job(held)
    assert job["state"] == "Pending" and job["robot_id"] in (None, second_id), job
    assert (await api.get_robot(second_id))["status"] == "Unlicensed"

    # The licensed robot goes away: the unlicensed one, still running, takes its seat and the job.
    first.stop()
    done = await api.wait_job(held, stack=stack)
    assert done["state"] == "Successful" and done["robot_id"] == second_id
    assert (await api.get_robot(second_id))["status_reason"] is None


async def test_expired_license_gives_no_work_and_says_why(api: Api, stack: Stack) -> None:
    scheduler = stack.service("scheduler", settings=LICENSED)
    gateway = stack.service("gateway", settings=LICENSED)
    await stack.start(scheduler, gateway)
    license_id = await install(api, LicenseKind.UNATTENDED, 5, datetime.now(UTC) - timedelta(seconds=1))
    assert (await api.call("GET", f"/licenses/{license_id}", 200))["expired"] is True

    robot_id, key = await api.robot()
    robot = stack.robot(gateway.ws_url, key)
    shown = await api.wait_robot(robot_id, "Unlicensed", stack=stack)
    assert shown["status_reason"] == "the Unattended license expired"
    await told(robot, "the Unattended license expired")
    job_id = await api.job("hello", robot=robot_id, input_args={"count": 1})
    await asyncio.sleep(3)
    assert (await api.get_job(job_id))["state"] == "Pending"

    # A valid license installed: the robot, still running, takes the seat and runs the job.
    await install(api, LicenseKind.UNATTENDED, 1)
    job = await api.wait_job(job_id, stack=stack)
    assert job["state"] == "Successful" and job["robot_id"] == robot_id
    assert (await api.get_robot(robot_id))["status_reason"] is None


async def test_license_expiring_while_connected_stops_new_work(api: Api, stack: Stack) -> None:
    scheduler = stack.service("scheduler", settings=LICENSED)
    gateway = stack.service("gateway", settings={**LICENSED, "RPA_GATEWAY_RECONCILE_INTERVAL_S": "0.5"})
    await stack.start(scheduler, gateway)
    await install(api, LicenseKind.UNATTENDED, 1, datetime.now(UTC) + timedelta(seconds=8))
    robot_id, key = await api.robot()
    robot = stack.robot(gateway.ws_url, key)
    await api.wait_robot(robot_id, "Ready", stack=stack)
    done = await api.wait_job(await api.job("hello", robot=robot_id, input_args={"count": 1}), stack=stack)
    assert done["state"] == "Successful"

    shown = await api.wait_robot(robot_id, "Unlicensed", timeout=30, stack=stack)
    assert shown["status_reason"] == "the Unattended license expired"
    await told(robot, "the Unattended license expired")
    job_id = await api.job("hello", robot=robot_id, input_args={"count": 1})
    await asyncio.sleep(3)
    assert (await api.get_job(job_id))["state"] == "Pending"
    assert (await api.get_robot(robot_id))["status"] == "Unlicensed"


async def test_seats_of_a_killed_gateway_come_back(api: Api, stack: Stack) -> None:
    scheduler = stack.service("scheduler", settings=LICENSED)
    doomed: Service = stack.service("gateway", settings=LICENSED)
    other = stack.service("gateway", settings=LICENSED)
    await stack.start(scheduler, doomed, other)
    await install(api, LicenseKind.UNATTENDED, 1)

    first_id, first_key = await api.robot()
    stack.robot(doomed.ws_url, first_key)
    await api.wait_robot(first_id, "Ready", stack=stack)
    doomed.kill()
    # The sweep sees the silent robot Disconnected: its seat is free for a robot elsewhere.
    await api.wait_robot(first_id, "Disconnected", stack=stack)
    second_id, second_key = await api.robot()
    stack.robot(other.ws_url, second_key)
    robot = await api.wait_robot(second_id, "Ready", stack=stack)
    assert robot["status_reason"] is None
    job = await api.wait_job(await api.job("hello", robot=second_id, input_args={"count": 1}), stack=stack)
    assert job["state"] == "Successful"
