"""What the task and resource tests of the gateway put in the database, standing in for the API
(tested elsewhere): queues, tasks, robot groups, resources and their values, credentials (sealed by
the real envelope encryption), and a raw-protocol robot that speaks the frames by hand."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession
from websockets.asyncio.client import ClientConnection, connect

from rpa_common import taskflow
from rpa_common.credentials import seal_password
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import (
    Queue,
    Resource,
    ResourceGroup,
    ResourceValue,
    RobotGroup,
    RobotGroupMember,
    Task,
    TaskEvent,
)
from rpa_common.models.enums import ResourceKind, ResourceScope, TaskPriority, TaskState
from rpa_common.nats import subjects
from rpa_common.nats.messages import ResourceChanged
from rpa_common.service import ServiceContext
from rpa_protocol import Ack, Hello, Welcome, encode, parse_gateway_frame
from tests.gateway.conftest import GatewayProcess, World

F = TypeVar("F")
ALL_CAPS = ["jobs", "logs", "tasks", "resources"]


class Wire:
    """A robot spoken by hand: frames out, frames in, nothing hidden."""

    def __init__(self, ws: ClientConnection, welcome: Welcome) -> None:
        self.ws = ws
        self.welcome = welcome
        self.seq = welcome.resume.last_seq if welcome.resume else 0
        self.inbox: list[Any] = []

    @classmethod
    async def open(cls, gateway: GatewayProcess, key: str, capabilities: list[str] | None = None) -> Wire:
        ws = await connect(
            gateway.ws_url, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=5
        )
        caps = ALL_CAPS if capabilities is None else capabilities
        await ws.send(encode(Hello(protocol=1, robot_version="test", machine="m", capabilities=caps)))
        welcome = parse_gateway_frame(await asyncio.wait_for(ws.recv(), 5))
        assert isinstance(welcome, Welcome), welcome
        return cls(ws, welcome)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def send(self, frame: BaseModel | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else encode(frame))

    async def recv(
        self, kind: type[F], match: Callable[[F], bool] = lambda f: True, timeout: float = 10
    ) -> F:
        """The next frame of ``kind`` that ``match``es (earlier ones are kept for later)."""
        for i, frame in enumerate(self.inbox):
            if isinstance(frame, kind) and match(frame):
                return self.inbox.pop(i)  # type: ignore[no-any-return]
        async with asyncio.timeout(timeout):
            while True:
                frame = parse_gateway_frame(await self.ws.recv())
                if isinstance(frame, kind) and match(frame):
                    return frame
                if frame is not None:
                    self.inbox.append(frame)

    async def call(self, frame: Any, kind: type[F], timeout: float = 10) -> F:
        """Send a frame carrying ``request_id``; its reply."""
        await self.send(frame)
        return await self.recv(kind, lambda r: getattr(r, "request_id", None) == frame.request_id, timeout)

    async def acked(self, seq: int, timeout: float = 10) -> Ack:
        return await self.recv(Ack, lambda a: a.seq >= seq, timeout)

    async def nothing(self, kind: type[Any], seconds: float) -> None:
        """No frame of ``kind`` arrives within ``seconds``."""
        try:
            frame = await self.recv(kind, timeout=seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected {frame!r}")

    async def close(self) -> None:
        await self.ws.close()


@dataclass
class Shared:
    """Queues, tasks and resources of one test's account."""

    world: World

    @property
    def ctx(self) -> ServiceContext:
        return self.world.ctx

    @property
    def account_id(self) -> uuid.UUID:
        return self.world.account_id

    async def run(self, work: Callable[[AsyncSession], Any]) -> Any:
        return await run_in_transaction(self.ctx.sessions, work)

    async def queue(self, name: str | None = None, **flags: Any) -> Queue:
        queue = Queue(
            id=uuid.uuid4(), account_id=self.account_id, name=name or f"q-{uuid.uuid4().hex[:8]}", **flags
        )

        async def work(session: AsyncSession) -> None:
            session.add(queue)

        await self.run(work)
        return queue

    async def add(
        self, queue: Queue, *names: str, priority: TaskPriority = TaskPriority.NORMAL
    ) -> list[Task]:
        async def work(session: AsyncSession) -> list[Task]:
            q = await session.get(Queue, queue.id)
            assert q is not None
            items = [
                taskflow.TaskInput(name=n, parameters={"n": i}, priority=priority)
                for i, n in enumerate(names)
            ]
            return await taskflow.add_tasks(session, account_id=self.account_id, queue=q, items=items)

        return list(await self.run(work))

    async def task(self, task_id: uuid.UUID) -> Task:
        async with self.ctx.sessions() as session:
            return (await session.execute(sa.select(Task).where(Task.id == task_id))).scalar_one()

    async def tasks(self, queue: Queue) -> list[Task]:
        async with self.ctx.sessions() as session:
            rows = await session.execute(
                sa.select(Task).where(Task.queue_id == queue.id).order_by(Task.created_at)
            )
            return list(rows.scalars())

    async def task_events(self, task_id: uuid.UUID) -> list[TaskEvent]:
        async with self.ctx.sessions() as session:
            rows = await session.execute(
                sa.select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.at)
            )
            return list(rows.scalars())

    async def expire_lock(self, task_id: uuid.UUID) -> None:
        """Time passing: the task's lock ran out (the robot was silent for its lock time) and the
        scheduler's sweep gave the task back (Created, its token kept: the next take adds one)."""

        async def work(session: AsyncSession) -> None:
            await session.execute(
                sa.update(Task)
                .where(Task.id == task_id)
                .values(lock_expires_at=datetime(2000, 1, 1, tzinfo=UTC), state=TaskState.CREATED)
            )

        await self.run(work)

    # Resources -------------------------------------------------------------------------------------

    async def group(self, *robot_ids: uuid.UUID, name: str | None = None) -> uuid.UUID:
        group_id = uuid.uuid4()

        async def work(session: AsyncSession) -> None:
            session.add(
                RobotGroup(id=group_id, account_id=self.account_id, name=name or f"g-{group_id.hex[:8]}")
            )
            await session.flush()
            for robot_id in robot_ids:
                session.add(RobotGroupMember(group_id=group_id, robot_id=robot_id))

        await self.run(work)
        return group_id

    async def resource(self, kind: ResourceKind, name: str | None = None) -> Resource:
        resource = Resource(
            id=uuid.uuid4(), account_id=self.account_id, name=name or f"r-{uuid.uuid4().hex[:8]}", kind=kind
        )

        async def work(session: AsyncSession) -> None:
            group = ResourceGroup(
                id=uuid.uuid4(), account_id=self.account_id, name=f"rg-{resource.id.hex[:8]}"
            )
            session.add(group)
            await session.flush()
            resource.group_id = group.id
            session.add(resource)

        await self.run(work)
        return resource

    async def value(
        self,
        resource: Resource,
        *,
        robot_id: uuid.UUID | None = None,
        group_id: uuid.UUID | None = None,
        text: str | None = None,
        login: str | None = None,
        password: str | None = None,
        expires_at: datetime | None = None,
    ) -> uuid.UUID:
        """A value for all robots, one group or one robot (a credential's password sealed for real)."""
        if robot_id is not None:
            scope, key = ResourceScope.ROBOT, f"robot:{robot_id}"
        elif group_id is not None:
            scope, key = ResourceScope.ROBOT_GROUP, f"group:{group_id}"
        else:
            scope, key = ResourceScope.ALL, "all"
        value = ResourceValue(
            id=uuid.uuid4(),
            account_id=self.account_id,
            resource_id=resource.id,
            scope=scope,
            robot_id=robot_id,
            robot_group_id=group_id,
            scope_key=key,
            text_value=text,
            login=login,
            expires_at=expires_at,
        )

        async def work(session: AsyncSession) -> None:
            if password is not None:
                await seal_password(session, self.ctx.settings, value, password)
            session.add(value)

        await self.run(work)
        return value.id

    async def set_text(self, value_id: uuid.UUID, text: str) -> None:
        """A person changes a value (as the API does, without its NATS message: see ``announce``)."""

        async def work(session: AsyncSession) -> None:
            await session.execute(
                sa.update(ResourceValue).where(ResourceValue.id == value_id).values(text_value=text)
            )

        await self.run(work)

    async def announce(self, resource: Resource) -> None:
        """What the API publishes after a person's change: ids and name, never a value."""
        msg = ResourceChanged(account_id=self.account_id, resource_id=resource.id, name=resource.name)
        await self.ctx.publish(subjects.RESOURCE_CHANGED, msg.encode())

    async def text_of(self, value_id: uuid.UUID) -> str | None:
        async with self.ctx.sessions() as session:
            return (
                await session.execute(sa.select(ResourceValue.text_value).where(ResourceValue.id == value_id))
            ).scalar_one()
