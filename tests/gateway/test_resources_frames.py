"""Resource and credential frames spoken by hand against a real gateway: scope resolution (robot over
group over all), sets within scope only, credential reads audited with the password in no log and no
NATS message, and watches pushed after a change, also when the change's NATS message was lost."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from rpa_common.audit import verify_account
from rpa_common.models import AuditRecord
from rpa_common.models.enums import ActorType, ResourceKind
from rpa_protocol import (
    CredentialGet,
    CredentialValue,
    Error,
    ResourceChanged,
    ResourceGet,
    ResourceSet,
    ResourceValue,
)
from tests.gateway.conftest import GatewayProcess, World
from tests.gateway.shared_world import Shared, Wire

PASSWORD = "Tr0ub4dor&3-never-logged"


def rid() -> uuid.UUID:
    return uuid.uuid4()


@pytest.fixture
def shared(world: World) -> Shared:
    return Shared(world)


async def robot(world: World, gateway: GatewayProcess) -> tuple[uuid.UUID, Wire]:
    robot_id, key = await world.robot()
    return robot_id, await Wire.open(gateway, key)


async def get(wire: Wire, name: str, watch: bool = False) -> ResourceValue:
    return await wire.call(
        ResourceGet(seq=wire.next_seq(), request_id=rid(), name=name, watch=watch), ResourceValue
    )


async def test_the_most_specific_value_wins_and_others_see_nothing(
    gateway: GatewayProcess, world: World, shared: Shared, ctx: Any
) -> None:
    own_id, own = await robot(world, gateway)
    member_id, member = await robot(world, gateway)
    _, outsider = await robot(world, gateway)
    group = await shared.group(own_id, member_id)
    rate = await shared.resource(ResourceKind.TEXT, "tax-rate")
    await shared.value(rate, text="0.20")
    await shared.value(rate, group_id=group, text="0.19")
    await shared.value(rate, robot_id=own_id, text="0.07")
    assert (await get(own, "tax-rate")).text == "0.07"
    assert (await get(member, "TAX-RATE")).text == "0.19"  # names are case-insensitive
    seen = await get(outsider, "tax-rate")
    assert (seen.text, seen.kind, seen.name, seen.error) == ("0.20", "text", "tax-rate", None)

    only_group = await shared.resource(ResourceKind.TEXT)
    await shared.value(only_group, group_id=group, text="members only")
    refused = await get(outsider, only_group.name)
    assert refused.error is not None and (refused.error.code, refused.error.field) == ("not_allowed", "name")
    assert refused.text is None and "members only" not in refused.model_dump_json()
    missing = await get(outsider, "no-such-resource")
    assert missing.error is not None and missing.error.code == "resource_not_found"

    # Another account's resource does not exist for this robot.
    other = World(ctx, uuid.uuid4())
    from rpa_common.db.uow import run_in_transaction
    from rpa_common.models import Account

    async def account(session: Any) -> None:
        session.add(Account(id=other.account_id, name=f"gw-{other.account_id.hex[:12]}"))

    await run_in_transaction(ctx.sessions, account)
    theirs = await Shared(other).resource(ResourceKind.TEXT)
    await Shared(other).value(theirs, text="theirs")
    foreign = await get(own, theirs.name)
    assert foreign.error is not None and foreign.error.code == "resource_not_found"

    # A calendar comes with its days; a credential's get never carries its password.
    login = await shared.resource(ResourceKind.CREDENTIALS)
    await shared.value(login, login="bot", password=PASSWORD)
    plain = await get(own, login.name)
    assert (plain.kind, plain.login, plain.error) == ("credentials", "bot", None)
    assert PASSWORD not in plain.model_dump_json()
    for wire in (own, member, outsider):
        await wire.close()


async def test_a_robot_sets_text_only_within_its_scope(
    gateway: GatewayProcess, world: World, shared: Shared
) -> None:
    own_id, own = await robot(world, gateway)
    _, other = await robot(world, gateway)
    counter = await shared.resource(ResourceKind.TEXT, "last-invoice")
    everyone = await shared.value(counter, text="100")
    mine = await shared.value(counter, robot_id=own_id, text="5")
    frame = ResourceSet(seq=own.next_seq(), request_id=rid(), name="last-invoice", value="6")
    reply = await own.call(frame, ResourceValue)
    assert (reply.text, reply.error) == ("6", None)
    await own.acked(frame.seq)
    assert await shared.text_of(mine) == "6" and await shared.text_of(everyone) == "100"
    assert (await get(other, "last-invoice")).text == "100"  # the robot's own value, not everyone's

    creds = await shared.resource(ResourceKind.CREDENTIALS)
    await shared.value(creds, login="x", password="p")
    wrong = await own.call(
        ResourceSet(seq=own.next_seq(), request_id=rid(), name=creds.name, value="v"), ResourceValue
    )
    assert wrong.error is not None and (wrong.error.code, wrong.error.field) == ("wrong_kind", "name")
    nobody = await shared.resource(ResourceKind.TEXT)
    none = await own.call(
        ResourceSet(seq=own.next_seq(), request_id=rid(), name=nobody.name, value="v"), ResourceValue
    )
    assert none.error is not None and none.error.code == "not_allowed"
    # A malformed set: an error naming the field, nothing written.
    seq = own.next_seq()
    await own.send(
        json.dumps(
            {
                "type": "resource.set",
                "seq": seq,
                "request_id": str(rid()),
                "name": "last-invoice",
                "value": "a\u0000",
            }
        )
    )
    err = await own.recv(Error, lambda e: e.seq == seq)
    assert (err.code, err.field) == ("bad_frame", "value")
    assert await shared.text_of(mine) == "6"
    await own.close()
    await other.close()


async def test_credential_reads_are_audited_and_the_password_goes_to_the_robot_only(
    gateway: GatewayProcess, world: World, shared: Shared, nats_inbox: Any
) -> None:
    traffic = await nats_inbox(">")
    robot_id, wire = await robot(world, gateway)
    erp = await shared.resource(ResourceKind.CREDENTIALS, "erp-login")
    await shared.value(erp, login="svc-erp", password=PASSWORD)
    reply = await wire.call(
        CredentialGet(seq=wire.next_seq(), request_id=rid(), name="erp-login"), CredentialValue
    )
    assert (reply.login, reply.password, reply.error, reply.expired) == ("svc-erp", PASSWORD, None, False)
    assert PASSWORD not in repr(reply)

    text = await shared.resource(ResourceKind.TEXT)
    await shared.value(text, text="t")
    kind = await wire.call(
        CredentialGet(seq=wire.next_seq(), request_id=rid(), name=text.name), CredentialValue
    )
    assert kind.error is not None and kind.error.code == "wrong_kind" and kind.password is None
    async with world.ctx.sessions() as session:
        audits = (
            (
                await session.execute(
                    sa.select(AuditRecord).where(
                        AuditRecord.account_id == world.account_id, AuditRecord.action == "read_credential"
                    )
                )
            )
            .scalars()
            .all()
        )
    assert len(audits) == 1 and audits[0].actor_id == robot_id and audits[0].object_id == str(erp.id)
    assert PASSWORD not in json.dumps(audits[0].changes)
    # Chained like any record, with where the robot's connection came from.
    assert (audits[0].kind, audits[0].actor_type) == ("robot", ActorType.ROBOT)
    assert audits[0].seq is not None and audits[0].hash is not None
    assert audits[0].client_address == "127.0.0.1" and audits[0].user_agent
    async with world.ctx.sessions() as session:
        assert (await verify_account(session, world.account_id)).ok
    await wire.close()
    await asyncio.sleep(0.3)
    assert traffic, "the test heard no NATS traffic at all"
    assert not [m for m in traffic if PASSWORD.encode() in m]
    assert PASSWORD not in gateway.log_path.read_text(errors="replace")


async def test_a_watched_resource_is_pushed_when_a_person_changes_it(
    gateway: GatewayProcess, world: World, shared: Shared
) -> None:
    own_id, own = await robot(world, gateway)
    _, watcher = await robot(world, gateway)
    _, idle = await robot(world, gateway)
    mode = await shared.resource(ResourceKind.TEXT, "mode")
    everyone = await shared.value(mode, text="normal")
    await shared.value(mode, robot_id=own_id, text="pinned")
    assert (await get(watcher, "Mode", watch=True)).text == "normal"
    assert (await get(own, "mode", watch=True)).text == "pinned"
    assert (await get(idle, "mode")).text == "normal"

    await shared.set_text(everyone, "maintenance")
    await shared.announce(mode)
    pushed = await watcher.recv(ResourceChanged, timeout=5)
    assert (pushed.name, pushed.kind, pushed.text) == ("Mode", "text", "maintenance")
    # Robots whose view did not change hear nothing; robots that did not watch neither.
    await own.nothing(ResourceChanged, 1.0)
    await idle.nothing(ResourceChanged, 0.2)
    # The same message again (a duplicate): nothing new to push.
    await shared.announce(mode)
    await watcher.nothing(ResourceChanged, 1.0)
    for wire in (own, watcher, idle):
        await wire.close()


async def test_a_lost_change_message_delays_a_push_but_never_stops_it(
    world: World, shared: Shared, gateway_factory: Any
) -> None:
    gw: GatewayProcess = gateway_factory(RPA_GATEWAY_WATCH_RECHECK_S="1")
    await asyncio.to_thread(gw.start)
    _, key = await world.robot()
    wire = await Wire.open(gw, key)
    flag = await shared.resource(ResourceKind.TEXT)
    value = await shared.value(flag, text="off")
    assert (await get(wire, flag.name, watch=True)).text == "off"
    await shared.set_text(value, "on")  # changed, but its NATS message never arrives
    pushed = await wire.recv(ResourceChanged, timeout=5)
    assert pushed.text == "on"
    # Given later to nobody: the watch hears that the robot no longer sees it.
    async with world.ctx.sessions() as session:
        from rpa_common.models import ResourceValue as Row

        await session.execute(sa.delete(Row).where(Row.id == value))
        await session.commit()
    gone = await wire.recv(ResourceChanged, timeout=5)
    assert gone.error is not None and gone.error.code == "not_allowed" and gone.text is None
    await wire.close()


async def test_watches_are_limited_per_connection(
    gateway: GatewayProcess, world: World, shared: Shared
) -> None:
    from rpa_protocol.codes import MAX_WATCHES

    _, wire = await robot(world, gateway)
    names = [f"w-{i}-{uuid.uuid4().hex[:6]}" for i in range(MAX_WATCHES + 1)]
    replies = [await get(wire, n, watch=True) for n in names]
    assert all(r.error is not None and r.error.code == "resource_not_found" for r in replies[:-1])
    last = replies[-1].error
    assert last is not None and (last.code, last.field) == ("too_many", "watch")
    assert (await get(wire, names[0], watch=True)).error.code == "resource_not_found"  # type: ignore[union-attr]
    await wire.close()


async def test_a_change_made_through_the_api_reaches_the_watching_robot(
    gateway: GatewayProcess, ctx: Any, tenant: Any
) -> None:
    """The whole path: a person's PUT on the API, its ResourceChanged on NATS, the gateway's push."""
    people = World(ctx, tenant.account_id)
    robot_id, key = await people.robot()
    wire = await Wire.open(gateway, key)
    api, headers = tenant.client, tenant.headers
    group = await api.post(
        "/api/v1/resource-groups", json={"name": f"rg-{uuid.uuid4().hex[:6]}"}, headers=headers
    )
    assert group.status_code == 201, group.text
    made = await api.post(
        "/api/v1/resources",
        json={"group_id": group.json()["id"], "name": "greeting", "kind": "text"},
        headers=headers,
    )
    assert made.status_code == 201, made.text
    url = f"/api/v1/resources/{made.json()['id']}/values"
    put = await api.put(url, json={"scope": "all", "text": "hello"}, headers=headers)
    assert put.status_code == 201, put.text
    assert (await get(wire, "greeting", watch=True)).text == "hello"
    put = await api.put(
        url, json={"scope": "robot", "robot_id": str(robot_id), "text": "bonjour"}, headers=headers
    )
    assert put.status_code == 201, put.text
    pushed = await wire.recv(ResourceChanged, timeout=5)
    assert (pushed.name, pushed.text) == ("greeting", "bonjour")
    await wire.close()
