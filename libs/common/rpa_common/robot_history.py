"""The history of robots' statuses (``robot_status_interval``), which robot utilisation is read from.

Every writer that changes ``robot.status`` calls one of these in the same transaction, and only when
the status actually changed (they also write the ``robot.status`` event to the outbox, issue 13): a heartbeat or a reconnect in the same status writes nothing here. A
change costs two short statements on the robot's own rows (close the open interval, open the next);
going Disconnected costs one, and a sweep or a gateway release closes many robots' intervals in one.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common import events
from rpa_common.models import Robot, RobotStatusInterval
from rpa_common.models.enums import RobotStatus

_I = RobotStatusInterval


async def status_changed(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    robot_id: uuid.UUID,
    status: RobotStatus,
    at: datetime,
) -> None:
    """The robot's status became ``status`` at ``at``: close its open interval, open the next one."""
    _event(session, account_id, robot_id, status, at)
    await session.execute(
        sa.update(_I)
        .where(_I.robot_id == robot_id, _I.ended_at.is_(None))
        .values(ended_at=at)
        .execution_options(synchronize_session=False)
    )
    if status != RobotStatus.DISCONNECTED:
        await session.execute(
            sa.insert(_I).values(
                id=uuid.uuid4(), account_id=account_id, robot_id=robot_id, status=status, started_at=at
            )
        )


async def disconnected(session: AsyncSession, robot_ids: Collection[uuid.UUID], at: datetime) -> None:
    """These robots went Disconnected at ``at``: close their open intervals, in one statement."""
    if not robot_ids:
        return
    accounts = await session.execute(
        sa.select(Robot.id, Robot.account_id).where(Robot.id.in_(list(robot_ids)))
    )
    for robot_id, account_id in accounts.all():
        _event(session, account_id, robot_id, RobotStatus.DISCONNECTED, at)
    await session.execute(
        sa.update(_I)
        .where(_I.robot_id.in_(list(robot_ids)), _I.ended_at.is_(None))
        .values(ended_at=at)
        .execution_options(synchronize_session=False)
    )


def _event(
    session: AsyncSession, account_id: uuid.UUID, robot_id: uuid.UUID, status: RobotStatus, at: datetime
) -> None:
    events.record(
        session,
        "robot.status",
        account_id=account_id,
        object_id=robot_id,
        at=at,
        data={"robot_id": str(robot_id), "status": status.value},
    )
