"""The history of robots' statuses (``robot_status_interval``), which robot utilisation is read from.

Every writer that changes ``robot.status`` calls one of these in the same transaction, and only when
the status actually changed: a heartbeat or a reconnect in the same status writes nothing here. A
change costs two short statements on the robot's own rows (close the open interval, open the next);
going Disconnected costs one, and a sweep or a gateway release closes many robots' intervals in one.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.models import RobotStatusInterval
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
    await session.execute(
        sa.update(_I)
        .where(_I.robot_id.in_(list(robot_ids)), _I.ended_at.is_(None))
        .values(ended_at=at)
        .execution_options(synchronize_session=False)
    )
