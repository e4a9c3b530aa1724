"""What the statistics API reads besides jobs and tasks: the history of each robot's status."""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from rpa_common.models.base import Base, IdMixin, StrEnumType
from rpa_common.models.enums import RobotStatus


class RobotStatusInterval(IdMixin, Base):
    """One stretch of time a robot spent connected in one status (Ready, Working, Unlicensed).

    A robot has at most one open interval (``ended_at`` null): the status it has now. Going
    Disconnected closes it and opens none, so time disconnected has no rows. Written only when the
    status actually changes (``rpa_common.robot_history``), in the transaction that changes it.
    """

    __tablename__ = "robot_status_interval"
    __table_args__ = (
        # Closing the open interval of a robot (and the robot foreign key).
        sa.Index("ix_robot_status_interval_robot_id_ended_at", "robot_id", "ended_at"),
        # Statistics: an account's intervals that end after the start of a range (or are open),
        # covering so the utilisation query reads the index alone.
        sa.Index(
            "ix_robot_status_interval_stats", "account_id", "ended_at", "started_at", "robot_id", "status"
        ),
    )
    account_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("account.id", ondelete="CASCADE"))
    robot_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("robot.id", ondelete="CASCADE"))
    status: Mapped[RobotStatus] = mapped_column(StrEnumType(RobotStatus, 16))
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
