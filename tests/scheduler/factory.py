"""Rows for dispatch tests, written straight to the database (the robots/jobs API is not under test)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from nats.aio.msg import Msg

from rpa_common.db.uow import run_in_transaction
from rpa_common.jobflow import Actor, record_creation
from rpa_common.models import (
    Account,
    Job,
    JobEvent,
    Process,
    ProcessVersion,
    Robot,
    RobotGroup,
    RobotGroupMember,
    TerminalServer,
    UnattendedAccount,
)
from rpa_common.models.base import utcnow
from rpa_common.models.enums import JobPriority, JobState, RobotRole, RobotStatus
from rpa_common.sealing import SealKeyPair
from rpa_common.security import Encryptor, make_key
from rpa_common.service import ServiceContext


@dataclass
class World:
    """One account with one published process, for one test."""

    ctx: ServiceContext
    account_id: uuid.UUID
    process_id: uuid.UUID
    version_id: uuid.UUID
    gateway_id: str = field(default_factory=lambda: f"gw-{uuid.uuid4().hex[:12]}")
    seal: SealKeyPair = field(default_factory=SealKeyPair.generate)
    """The key pair of the world's coordinators (a Coordinator under test gets ``seal_key=world.seal``)."""

    async def robot(
        self,
        name: str | None = None,
        *,
        status: RobotStatus = RobotStatus.READY,
        role: RobotRole = RobotRole.ATTENDED,
        active: bool = True,
        gateway_id: str | None = "default",
    ) -> uuid.UUID:
        rid = uuid.uuid4()
        key = make_key("rbk")
        connected = status in (RobotStatus.READY, RobotStatus.WORKING)
        gw = (self.gateway_id if gateway_id == "default" else gateway_id) if connected else None
        robot = Robot(
            id=rid,
            account_id=self.account_id,
            name=name or f"robot-{rid.hex[:8]}",
            role=role,
            is_active=active,
            status=status,
            key_prefix=key.prefix,
            key_hash=key.hash,
            gateway_id=gw,
            connection_id=uuid.uuid4() if connected else None,
            connected_at=utcnow() if connected else None,
            last_heartbeat_at=utcnow() if connected else None,
        )
        await self._add(robot)
        return rid

    async def group(self, *robot_ids: uuid.UUID) -> uuid.UUID:
        gid = uuid.uuid4()

        async def work(session: Any) -> None:
            session.add(RobotGroup(id=gid, account_id=self.account_id, name=f"group-{gid.hex[:8]}"))
            await session.flush()
            for rid in robot_ids:
                session.add(RobotGroupMember(group_id=gid, robot_id=rid))

        await run_in_transaction(self.ctx.sessions, work)
        return gid

    async def job(
        self,
        *,
        robot_id: uuid.UUID | None = None,
        group_id: uuid.UUID | None = None,
        priority: JobPriority = JobPriority.NORMAL,
        created_at: datetime | None = None,
        max_retries: int = 0,
        **values: Any,
    ) -> uuid.UUID:
        jid = uuid.uuid4()
        at = created_at or utcnow()
        job = Job(
            id=jid,
            account_id=self.account_id,
            process_id=self.process_id,
            process_version_id=self.version_id,
            robot_id=robot_id,
            robot_group_id=group_id,
            priority=priority,
            max_retries=max_retries,
            attempt=0,
            created_at=at,
            updated_at=at,
            **{"input_args": {}, **values},
        )

        async def work(session: Any) -> None:
            session.add(job)
            await session.flush()
            record_creation(session, job, Actor.system())

        await run_in_transaction(self.ctx.sessions, work)
        return jid

    async def terminal_server(
        self, coordinator_id: uuid.UUID | None, max_sessions: int = 10, *, sealed: bool = True, **values: Any
    ) -> uuid.UUID:
        """A terminal server; ``sealed``: with ``self.seal``'s public key registered (as its coordinator
        does at start), so the scheduler can seal credentials to it."""
        sid = uuid.uuid4()
        fields: dict[str, Any] = {
            "name": f"ts-{sid.hex[:8]}",
            "hostname": "ts.example",
            "public_key": self.seal.public if sealed else None,
            **values,
        }
        await self._add(
            TerminalServer(
                id=sid,
                account_id=self.account_id,
                coordinator_id=coordinator_id,
                max_sessions=max_sessions,
                **fields,
            )
        )
        return sid

    def opened(self, msg: dict[str, Any]) -> dict[str, str]:
        """The sealed credentials of an ``OpenSession`` message, opened with ``self.seal``."""
        return self.seal.open_json(msg["sealed"], f"open_session:{msg['session_id']}")

    async def unattended_account(
        self, server_id: uuid.UUID, robot_id: uuid.UUID, login: str, password: str
    ) -> uuid.UUID:
        uid = uuid.uuid4()
        blob = Encryptor.from_settings(self.ctx.settings).encrypt(password, context=str(self.account_id))
        await self._add(
            UnattendedAccount(
                id=uid,
                account_id=self.account_id,
                terminal_server_id=server_id,
                robot_id=robot_id,
                login=login,
                domain="CORP",
                password_encrypted=blob,
            )
        )
        return uid

    async def set(self, model: Any, row_id: uuid.UUID, **values: Any) -> None:
        async def work(session: Any) -> None:
            await session.execute(sa.update(model).where(model.id == row_id).values(**values))

        await run_in_transaction(self.ctx.sessions, work)

    async def get(self, model: Any, row_id: uuid.UUID) -> Any:
        async with self.ctx.sessions() as session:
            return await session.get(model, row_id, populate_existing=True)

    async def events(self, job_id: uuid.UUID) -> list[JobEvent]:
        async with self.ctx.sessions() as session:
            rows = await session.execute(
                sa.select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.at, JobEvent.to_state)
            )
            return list(rows.scalars())

    async def jobs(self) -> list[Job]:
        async with self.ctx.sessions() as session:
            rows = await session.execute(sa.select(Job).where(Job.account_id == self.account_id))
            return list(rows.scalars())

    async def _add(self, obj: Any) -> None:
        async def work(session: Any) -> None:
            session.add(obj)

        await run_in_transaction(self.ctx.sessions, work)


async def new_world(ctx: ServiceContext) -> World:
    account_id, process_id, version_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    async def work(session: Any) -> None:
        session.add(Account(id=account_id, name=f"acc-{account_id.hex[:12]}"))
        await session.flush()
        session.add(Process(id=process_id, account_id=account_id, name="invoices"))
        await session.flush()
        session.add(
            ProcessVersion(
                id=version_id,
                account_id=account_id,
                process_id=process_id,
                version="1.0.0",
                entry_point="main.py",
                sha256="0" * 64,
                size=1,
            )
        )
        await session.flush()
        await session.execute(
            sa.update(Process).where(Process.id == process_id).values(current_version_id=version_id)
        )

    await run_in_transaction(ctx.sessions, work)
    return World(ctx, account_id, process_id, version_id)


def ago(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)


class Inbox:
    """Messages received on one NATS subject during a test."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._event = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        self.messages.append(json.loads(msg.data))
        self._event.set()

    async def wait_for(self, predicate: Any, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for m in self.messages:
                    if predicate(m):
                        return m
                self._event.clear()
                await self._event.wait()

    async def quiet(self, seconds: float, predicate: Any) -> bool:
        """True when no message matching ``predicate`` came within ``seconds``."""
        await asyncio.sleep(seconds)
        return not any(predicate(m) for m in self.messages)


@asynccontextmanager
async def listen(ctx: ServiceContext, subject: str) -> AsyncIterator[Inbox]:
    inbox = Inbox()
    sub = await ctx.nc.subscribe(subject, cb=inbox.on_msg)
    await ctx.nc.flush()
    try:
        yield inbox
    finally:
        await sub.unsubscribe()


STARTING = JobState.STARTING
