"""The gateway replica: one ``Hub`` per process, with its own ``gateway_id``, holding the parts.

- ``connections``: serving each robot connection (hello, registration, its frames in order);
- ``writer``: group commit of the robot frames of all connections;
- ``heartbeats``: batched heartbeat writes, lease renewal of confirmed jobs, stale sockets closed;
- ``reconcile``: the database's jobs for this replica's robots against what their connections hold;
- ``commands``: NATS commands for the robots held here;
- ``watches``: ``resource.changed`` pushes for the resources robots watch (NATS hint + periodic check).
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.websockets import WebSocket

from rpa_common import robot_history
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Robot
from rpa_common.models.base import utcnow
from rpa_common.models.enums import RobotStatus
from rpa_common.nats import subjects
from rpa_common.nats.messages import Message, RobotStatusChanged
from rpa_common.service import ServiceContext
from rpa_gateway import store
from rpa_gateway.commands import Commands
from rpa_gateway.connection import Connection
from rpa_gateway.connections import ConnectionHandler
from rpa_gateway.heartbeats import Heartbeats
from rpa_gateway.reconcile import Reconciler
from rpa_gateway.watches import Watches
from rpa_gateway.writer import FrameWriter
from rpa_protocol.codes import CLOSE_RESTART

log = structlog.get_logger(__name__)


class Hub:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.gateway_id = uuid.uuid4().hex
        self.connections: dict[uuid.UUID, Connection] = {}  # robot id -> its main connection
        self.writer = FrameWriter(ctx)
        self.heartbeats = Heartbeats(ctx, self.gateway_id, self.connections.get)
        self.reconciler = Reconciler(ctx, self.gateway_id, self.connections, self.refresh_status)
        self.commands = Commands(self)
        self.watches = Watches(self)
        self.handler = ConnectionHandler(self)

    async def start(self) -> None:
        self.writer.start()
        await self.commands.start()
        await self.watches.start()
        self.heartbeats.start()
        self.reconciler.start()
        log.info("gateway.started", gateway_id=self.gateway_id)

    async def publish(self, subject: str, msg: Message) -> None:
        """After a commit: a message NATS cannot take now is logged and retried by the context's
        ``Publisher`` (``rpa_common.nats.publisher``), never dropped silently."""
        await self.ctx.publish(subject, msg.encode())

    async def serve(self, ws: WebSocket, robot: store.RobotIdentity) -> None:
        await self.handler.serve(ws, robot)

    async def refresh_status(self, conn: Connection) -> None:
        """Make the robot's status say Working or Ready from its current job; publish a change."""
        status = await run_in_transaction(
            self.ctx.sessions, lambda s: store.refresh_status(s, conn.robot.id, conn.connection_id)
        )
        if status is not None:
            await self.publish(subjects.ROBOT_STATUS, store.status_message(conn.robot, status))

    async def stop(self) -> None:
        await self.commands.stop()
        await self.watches.stop()
        await self.reconciler.stop()
        for conn in list(self.connections.values()):
            await conn.close(CLOSE_RESTART, "gateway restarting")
        await self.writer.stop()
        await self.heartbeats.stop()

        # Whatever this replica still holds is Disconnected now (a newer connection elsewhere wins).
        async def work(session: AsyncSession) -> list[tuple[uuid.UUID, uuid.UUID]]:
            rows = (
                await session.execute(
                    sa.select(Robot.id, Robot.account_id).where(Robot.gateway_id == self.gateway_id)
                )
            ).all()
            now = utcnow()
            await session.execute(
                sa.update(Robot)
                .where(Robot.gateway_id == self.gateway_id)
                .values(status=RobotStatus.DISCONNECTED, status_reason=None, gateway_id=None, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            await robot_history.disconnected(session, [r.id for r in rows], now)
            return [(r.id, r.account_id) for r in rows]

        try:
            released = await run_in_transaction(self.ctx.sessions, work)
        except Exception as exc:
            log.warning("gateway.release_failed", error=str(exc))
            released = []
        for robot_id, account_id in released:
            await self.publish(
                subjects.ROBOT_STATUS,
                RobotStatusChanged(
                    account_id=account_id, robot_id=robot_id, status=RobotStatus.DISCONNECTED, at=utcnow()
                ),
            )


__all__ = ["Connection", "Hub"]
