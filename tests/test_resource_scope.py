"""Resources as robots see them (``rpa_common.resources``), on both databases: the most specific value
wins (robot over group over all), two groups resolve by group name, a robot sets Text only within its
scope and never creates a value, and a credential read returns the password and is audited."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.credentials import seal_password
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import (
    Account,
    AuditRecord,
    Calendar,
    CalendarDay,
    Resource,
    ResourceGroup,
    ResourceValue,
    Robot,
    RobotGroup,
    RobotGroupMember,
)
from rpa_common.models.enums import ActorType, ResourceKind, ResourceScope, RobotRole
from rpa_common.resources import ResourceError, credential_for_robot, resolve_for_robot, set_text_for_robot
from rpa_common.service import ServiceContext


class World:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.account_id = uuid.uuid4()
        self.group_id = uuid.uuid4()

    async def run(self, work: Any) -> Any:
        return await run_in_transaction(self.ctx.sessions, work)

    async def setup(self) -> None:
        async def work(s: AsyncSession) -> None:
            s.add(Account(id=self.account_id, name=f"acc-{uuid.uuid4().hex[:10]}"))
            await s.flush()
            s.add(ResourceGroup(id=self.group_id, account_id=self.account_id, name="g"))
            await s.flush()

        await self.run(work)

    async def robot(self, *groups: uuid.UUID) -> uuid.UUID:
        rid = uuid.uuid4()

        async def work(s: AsyncSession) -> None:
            s.add(
                Robot(
                    id=rid,
                    account_id=self.account_id,
                    name=f"r-{rid.hex[:8]}",
                    role=RobotRole.ATTENDED,
                    key_prefix=rid.hex[:12],
                    key_hash=rid.hex,
                )
            )
            await s.flush()
            for g in groups:
                s.add(RobotGroupMember(group_id=g, robot_id=rid))
            await s.flush()

        await self.run(work)
        return rid

    async def robot_group(self, name: str) -> uuid.UUID:
        gid = uuid.uuid4()

        async def work(s: AsyncSession) -> None:
            s.add(RobotGroup(id=gid, account_id=self.account_id, name=name))
            await s.flush()

        await self.run(work)
        return gid

    async def resource(self, name: str, kind: ResourceKind) -> uuid.UUID:
        rid = uuid.uuid4()

        async def work(s: AsyncSession) -> None:
            s.add(Resource(id=rid, account_id=self.account_id, group_id=self.group_id, name=name, kind=kind))
            await s.flush()

        await self.run(work)
        return rid

    async def value(
        self,
        resource_id: uuid.UUID,
        scope: ResourceScope,
        target: uuid.UUID | None = None,
        *,
        text: str | None = None,
        password: str | None = None,
        calendar_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        vid = uuid.uuid4()
        key = {
            ResourceScope.ALL: "all",
            ResourceScope.ROBOT: f"robot:{target}",
            ResourceScope.ROBOT_GROUP: f"group:{target}",
        }[scope]

        async def work(s: AsyncSession) -> None:
            v = ResourceValue(
                id=vid,
                account_id=self.account_id,
                resource_id=resource_id,
                scope=scope,
                robot_id=target if scope is ResourceScope.ROBOT else None,
                robot_group_id=target if scope is ResourceScope.ROBOT_GROUP else None,
                scope_key=key,
                text_value=text,
                calendar_id=calendar_id,
                login="bot" if password else None,
            )
            if password is not None:
                await seal_password(s, self.ctx.settings, v, password)
            s.add(v)
            await s.flush()

        await self.run(work)
        return vid


@pytest.fixture
async def world(ctx: ServiceContext) -> World:
    w = World(ctx)
    await w.setup()
    return w


async def resolve(w: World, robot: uuid.UUID, name: str) -> Any:
    return await w.run(lambda s: resolve_for_robot(s, account_id=w.account_id, robot_id=robot, name=name))


async def test_robot_over_group_over_all(world: World) -> None:
    w = world
    alpha = await w.robot_group("Alpha")
    beta = await w.robot_group("beta")
    lone = await w.robot()
    in_both = await w.robot(beta, alpha)
    in_beta = await w.robot(beta)
    res = await w.resource("Endpoint", ResourceKind.TEXT)
    await w.value(res, ResourceScope.ALL, text="all")
    await w.value(res, ResourceScope.ROBOT_GROUP, beta, text="beta")
    await w.value(res, ResourceScope.ROBOT_GROUP, alpha, text="alpha")
    own = await w.value(res, ResourceScope.ROBOT, in_beta, text="own")

    assert (await resolve(w, lone, "Endpoint")).text == "all"
    # Two groups with values: the group whose name comes first, any case ("Alpha" < "beta").
    got = await resolve(w, in_both, "endpoint")
    assert got.text == "alpha" and got.scope is ResourceScope.ROBOT_GROUP
    got = await resolve(w, in_beta, "Endpoint")
    assert got.text == "own" and got.scope is ResourceScope.ROBOT and got.value_id == own
    assert got.login is None and got.calendar is None and got.kind is ResourceKind.TEXT

    with pytest.raises(ResourceError) as err:
        await resolve(w, lone, "Nope")
    assert err.value.code == "resource_not_found" and err.value.status == 404 and err.value.field == "name"
    only_robot = await w.resource("Private", ResourceKind.TEXT)
    await w.value(only_robot, ResourceScope.ROBOT, in_beta, text="x")
    with pytest.raises(ResourceError) as err:
        await resolve(w, lone, "Private")
    assert err.value.code == "not_allowed"


async def test_text_set_by_a_robot_stays_within_its_scope(world: World, ctx: ServiceContext) -> None:
    w = world
    grp = await w.robot_group("night")
    member = await w.robot(grp)
    other = await w.robot()
    res = await w.resource("Counter", ResourceKind.TEXT)
    all_id = await w.value(res, ResourceScope.ALL, text="0")
    grp_id = await w.value(res, ResourceScope.ROBOT_GROUP, grp, text="10")

    def set_(robot: uuid.UUID, value: str, name: str = "Counter") -> Any:
        return w.run(
            lambda s: set_text_for_robot(s, account_id=w.account_id, robot_id=robot, name=name, value=value)
        )

    got = await set_(member, "11")
    assert got.value_id == grp_id and got.text == "11"
    # The group's value changed; the all-robots value did not, and no robot value was created.
    assert (await resolve(w, other, "Counter")).text == "0"
    got = await set_(other, "1")
    assert got.value_id == all_id
    assert (await resolve(w, member, "Counter")).text == "11"

    async def count(s: AsyncSession) -> int:
        return int(await s.scalar(sa.select(sa.func.count()).where(ResourceValue.resource_id == res)) or 0)

    assert await w.run(count) == 2

    async def audits(s: AsyncSession) -> list[Any]:
        rows = await s.execute(
            sa.select(AuditRecord).where(
                AuditRecord.account_id == w.account_id, AuditRecord.action == "set_text"
            )
        )
        return list(rows.scalars())

    records = await w.run(audits)
    assert {r.actor_id for r in records} == {member, other}
    assert all(r.actor_type is ActorType.ROBOT for r in records)

    # A robot with no value in scope cannot create one; bad values and wrong kinds are refused.
    only_group = await w.resource("GroupOnly", ResourceKind.TEXT)
    await w.value(only_group, ResourceScope.ROBOT_GROUP, grp, text="g")
    with pytest.raises(ResourceError) as err:
        await set_(other, "x", "GroupOnly")
    assert err.value.code == "not_allowed"
    with pytest.raises(ResourceError) as err:
        await set_(member, "a\x00b")
    assert err.value.code == "invalid" and err.value.field == "value"
    cred = await w.resource("Login", ResourceKind.CREDENTIALS)
    await w.value(cred, ResourceScope.ALL, password="pw-1")
    with pytest.raises(ResourceError) as err:
        await set_(member, "x", "Login")
    assert err.value.code == "wrong_kind"


async def test_credential_read_by_a_robot_is_audited_and_scoped(world: World, ctx: ServiceContext) -> None:
    w = world
    grp = await w.robot_group("finance")
    member = await w.robot(grp)
    outsider = await w.robot()
    res = await w.resource("Erp", ResourceKind.CREDENTIALS)
    await w.value(res, ResourceScope.ROBOT_GROUP, grp, password="group-pw-7")

    resolved, password = await w.run(
        lambda s: credential_for_robot(s, ctx.settings, account_id=w.account_id, robot_id=member, name="Erp")
    )
    assert password == "group-pw-7" and resolved.login == "bot" and resolved.expired is False
    plain = await resolve(w, member, "Erp")
    assert "group-pw-7" not in repr(plain)
    with pytest.raises(ResourceError) as err:
        await w.run(
            lambda s: credential_for_robot(
                s, ctx.settings, account_id=w.account_id, robot_id=outsider, name="Erp"
            )
        )
    assert err.value.code == "not_allowed"

    async def audits(s: AsyncSession) -> list[Any]:
        rows = await s.execute(
            sa.select(AuditRecord).where(
                AuditRecord.account_id == w.account_id, AuditRecord.action == "read_credential"
            )
        )
        return list(rows.scalars())

    records = await w.run(audits)
    assert len(records) == 1 and records[0].actor_id == member and records[0].actor_type is ActorType.ROBOT
    assert "group-pw-7" not in str(records[0].changes)
    text = await w.resource("Txt", ResourceKind.TEXT)
    await w.value(text, ResourceScope.ALL, text="t")
    with pytest.raises(ResourceError) as err:
        await w.run(
            lambda s: credential_for_robot(
                s, ctx.settings, account_id=w.account_id, robot_id=member, name="Txt"
            )
        )
    assert err.value.code == "wrong_kind"


async def test_a_calendar_resource_resolves_to_its_calendar(world: World) -> None:
    w = world
    cal_id = uuid.uuid4()

    async def work(s: AsyncSession) -> None:
        s.add(
            Calendar(
                id=cal_id, account_id=w.account_id, name="fr", time_zone="Europe/Paris", weekend_days=[6, 7]
            )
        )
        await s.flush()
        import datetime as dt

        s.add(CalendarDay(calendar_id=cal_id, day=dt.date(2026, 12, 25), working=False, note="Noël"))
        await s.flush()

    await w.run(work)
    robot = await w.robot()
    res = await w.resource("Holidays", ResourceKind.CALENDAR)
    await w.value(res, ResourceScope.ALL, calendar_id=cal_id)
    got = await resolve(w, robot, "Holidays")
    assert got.calendar is not None
    assert got.calendar["time_zone"] == "Europe/Paris" and got.calendar["weekend_days"] == [6, 7]
    assert got.calendar["days"] == [{"day": "2026-12-25", "working": False, "note": "Noël"}]
