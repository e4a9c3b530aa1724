"""Robots, robot groups, terminal servers, unattended accounts and their sessions."""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from rpa_common.models.base import (
    Base,
    IdMixin,
    StrEnumType,
    TimestampMixin,
    account_fk,
    folder_fk,
    unique_name,
)
from rpa_common.models.enums import RobotRole, RobotStatus, SessionState, ShellMode


class Robot(IdMixin, TimestampMixin, Base):
    __tablename__ = "robot"
    __table_args__ = unique_name("robot")
    account_id: Mapped[uuid.UUID] = account_fk()
    folder_id: Mapped[uuid.UUID | None] = folder_fk()
    name: Mapped[str] = mapped_column(sa.String(100))
    description: Mapped[str] = mapped_column(sa.String(1000), default="")
    role: Mapped[RobotRole] = mapped_column(StrEnumType(RobotRole, 16))
    is_active: Mapped[bool] = mapped_column(default=True)
    status: Mapped[RobotStatus] = mapped_column(
        StrEnumType(RobotStatus, 16), default=RobotStatus.DISCONNECTED
    )
    # Why the robot is Unlicensed (no free seat, license expired); null otherwise.
    status_reason: Mapped[str | None] = mapped_column(sa.String(200))
    # The key is shown once; lookups go by its public prefix, checks by its hash.
    key_prefix: Mapped[str] = mapped_column(sa.String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(sa.String(128))
    last_heartbeat_at: Mapped[datetime | None]
    machine: Mapped[str | None] = mapped_column(sa.String(255))
    version: Mapped[str | None] = mapped_column(sa.String(50))
    # Which gateway replica holds the robot's connection (for push), and since when.
    gateway_id: Mapped[str | None] = mapped_column(sa.String(100))
    connection_id: Mapped[uuid.UUID | None]
    connected_at: Mapped[datetime | None]
    # The job this robot is busy with; set by a guarded UPDATE (... WHERE current_job_id IS NULL),
    # which is what makes "one running job per robot" hold across replicas on both databases.
    current_job_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("job.id", ondelete="SET NULL", use_alter=True), index=True
    )
    # Highest sequence number of robot->gateway frames already applied (resume without doubles).
    inbound_seq: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class RobotGroup(IdMixin, TimestampMixin, Base):
    __tablename__ = "robot_group"
    __table_args__ = unique_name("robot_group")
    account_id: Mapped[uuid.UUID] = account_fk()
    folder_id: Mapped[uuid.UUID | None] = folder_fk()
    name: Mapped[str] = mapped_column(sa.String(100))
    description: Mapped[str] = mapped_column(sa.String(1000), default="")


class RobotGroupMember(Base):
    __tablename__ = "robot_group_member"
    group_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("robot_group.id", ondelete="CASCADE"), primary_key=True
    )
    robot_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("robot.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class TerminalServer(IdMixin, TimestampMixin, Base):
    """A server hosting unattended accounts, served by one coordinator robot."""

    __tablename__ = "terminal_server"
    __table_args__ = unique_name("terminal_server")
    account_id: Mapped[uuid.UUID] = account_fk()
    name: Mapped[str] = mapped_column(sa.String(100))
    hostname: Mapped[str] = mapped_column(sa.String(255), default="")
    description: Mapped[str] = mapped_column(sa.String(1000), default="")
    coordinator_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("robot.id", ondelete="SET NULL"), index=True
    )
    max_sessions: Mapped[int] = mapped_column(default=10)
    # How the coordinator reaches the server over RDP (rdp driver). The hostname above is the
    # RDP host; the certificate is pinned by fingerprint unless ``cert_ignore`` (test servers).
    rdp_port: Mapped[int] = mapped_column(default=3389, server_default=sa.text("3389"))
    cert_fingerprint: Mapped[str | None] = mapped_column(sa.String(200))
    cert_ignore: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    # "command": the robot's command runs as the RDP alternate shell (``shell_command``, else the
    # coordinator's default); "startup": the account's own session start-up starts the robot.
    shell_mode: Mapped[ShellMode] = mapped_column(
        StrEnumType(ShellMode, 16), default=ShellMode.COMMAND, server_default=ShellMode.COMMAND.value
    )
    shell_command: Mapped[str | None] = mapped_column(sa.String(1000))
    # The coordinator's X25519 public key (rpa_common.sealing): the scheduler seals each
    # session's password and robot key to it. Registered by the coordinator at start, or by a person.
    public_key: Mapped[str | None] = mapped_column(sa.String(64))


class UnattendedAccount(IdMixin, TimestampMixin, Base):
    """An OS account on a terminal server, bound to one unattended robot. Password encrypted."""

    __tablename__ = "unattended_account"
    __table_args__ = unique_name("unattended_account", "login")
    account_id: Mapped[uuid.UUID] = account_fk()
    terminal_server_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("terminal_server.id", ondelete="CASCADE"), index=True
    )
    robot_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("robot.id", ondelete="SET NULL"), unique=True
    )
    login: Mapped[str] = mapped_column(sa.String(255))
    domain: Mapped[str | None] = mapped_column(sa.String(255))
    password_encrypted: Mapped[bytes | None]


class TerminalSession(IdMixin, TimestampMixin, Base):
    """A session the coordinator opened (or tried to) for an unattended account."""

    __tablename__ = "terminal_session"
    account_id: Mapped[uuid.UUID] = account_fk()
    unattended_account_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("unattended_account.id", ondelete="CASCADE"), index=True
    )
    terminal_server_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("terminal_server.id", ondelete="CASCADE"), index=True
    )
    robot_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("robot.id", ondelete="SET NULL"), index=True
    )
    job_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("job.id", ondelete="SET NULL"), index=True)
    state: Mapped[SessionState] = mapped_column(StrEnumType(SessionState, 20), default=SessionState.REQUESTED)
    reason: Mapped[str | None] = mapped_column(sa.String(1000))
    # The robot key minted for this session, encrypted, while the coordinator has not answered: an
    # OpenSession sent again carries the same key (a new one would lock out a robot already started
    # with the first). Cleared once the coordinator reports.
    robot_key_encrypted: Mapped[bytes | None]
    opened_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
