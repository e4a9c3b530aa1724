"""Seat allocation at attach, as two gateways race for the last seat: the account's license rows are
locked while a robot's seat is decided, so exactly one of two robots connecting at once gets it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Robot
from rpa_common.models.enums import LicenseKind, RobotStatus
from rpa_common.service import ServiceContext
from rpa_gateway import store
from rpa_protocol import Hello
from tests.api.test_robots import create_robot
from tests.conftest import Tenant
from tests.license_keys import issue_key

HELLO = Hello(protocol=1, robot_version="t", machine="m", capabilities=["jobs"])


async def attach(ctx: ServiceContext, robot_id: str, gateway: str) -> Any:
    async def work(session: AsyncSession) -> Any:
        # Hold the transaction a moment after deciding, so the two really overlap.
        attached = await store.attach(
            session,
            uuid.UUID(robot_id),
            gateway_id=gateway,
            connection_id=uuid.uuid4(),
            hello=HELLO,
            lease_s=30,
            license_required=True,
        )
        await asyncio.sleep(0.3)
        return attached

    return await run_in_transaction(ctx.sessions, work)


async def statuses(ctx: ServiceContext, ids: list[str]) -> list[tuple[RobotStatus, str | None]]:
    async with ctx.sessions() as session:
        rows = await session.execute(
            sa.select(Robot.id, Robot.status, Robot.status_reason).where(
                Robot.id.in_([uuid.UUID(i) for i in ids])
            )
        )
        return sorted((r.status, r.status_reason) for r in rows)


async def test_two_gateways_cannot_give_away_one_seat_twice(
    client: httpx.AsyncClient, tenant: Tenant, ctx: ServiceContext
) -> None:
    r = await client.post("/api/v1/licenses", json={"key": issue_key(capacity=1)}, headers=tenant.headers)
    assert r.status_code == 201, r.text
    robots = [(await create_robot(client, tenant, role="unattended"))["id"] for _ in range(2)]
    results = await asyncio.gather(attach(ctx, robots[0], "gw-a"), attach(ctx, robots[1], "gw-b"))
    assert sorted(str(a.status) for a in results) == ["Ready", "Unlicensed"]
    assert await statuses(ctx, robots) == [
        (RobotStatus.READY, None),
        (RobotStatus.UNLICENSED, "all 1 Unattended license seats are in use"),
    ]
    # The holder disconnects: its seat is free for the other robot's next connection.
    holder = robots[0] if results[0].status == RobotStatus.READY else robots[1]
    waiting = robots[1] if holder == robots[0] else robots[0]

    async def drop(session: AsyncSession) -> None:
        await session.execute(
            sa.update(Robot)
            .where(Robot.id == uuid.UUID(holder))
            .values(status=RobotStatus.DISCONNECTED, gateway_id=None)
        )

    await run_in_transaction(ctx.sessions, drop)
    again = await attach(ctx, waiting, "gw-b")
    assert again.status == RobotStatus.READY and again.unlicensed is None


async def test_attended_robots_need_an_attended_seat_and_coordinators_none(
    client: httpx.AsyncClient, tenant: Tenant, ctx: ServiceContext
) -> None:
    attended = (await create_robot(client, tenant, role="attended"))["id"]
    coordinator = (await create_robot(client, tenant, role="coordinator"))["id"]
    assert (await attach(ctx, coordinator, "gw")).status == RobotStatus.READY
    first = await attach(ctx, attended, "gw")
    assert first.unlicensed == "no Attended or Attended Floating license is installed"
    expired = datetime.now(UTC) - timedelta(days=1)
    key = issue_key(LicenseKind.ATTENDED_FLOATING, 1, expired)
    assert (
        await client.post("/api/v1/licenses", json={"key": key}, headers=tenant.headers)
    ).status_code == 201
    second = await attach(ctx, attended, "gw")
    assert second.unlicensed == "the Attended or Attended Floating license expired"
    key = issue_key(LicenseKind.ATTENDED, 1)
    assert (
        await client.post("/api/v1/licenses", json={"key": key}, headers=tenant.headers)
    ).status_code == 201
    assert (await attach(ctx, attended, "gw")).status == RobotStatus.READY
