"""Resource groups and resources (text, credentials, calendar), with a value per scope.

A resource's name is unique in its account (robots ask for resources by name); the group only
organises resources and gives them an access folder. A credential value is stored with envelope
encryption (``rpa_common.credentials``): the password is encrypted with AES-256-GCM under a data key
of its own, and that data key is stored wrapped by a master key named by ``master_key_id``.
"""

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
    utcnow,
)
from rpa_common.models.enums import ResourceKind, ResourceScope


class ResourceGroup(IdMixin, TimestampMixin, Base):
    __tablename__ = "resource_group"
    __table_args__ = unique_name("resource_group")
    account_id: Mapped[uuid.UUID] = account_fk()
    folder_id: Mapped[uuid.UUID | None] = folder_fk()
    name: Mapped[str] = mapped_column(sa.String(100))
    description: Mapped[str] = mapped_column(sa.String(1000), default="")


class Resource(IdMixin, TimestampMixin, Base):
    __tablename__ = "resource"
    __table_args__ = unique_name("resource")
    account_id: Mapped[uuid.UUID] = account_fk()
    group_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("resource_group.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(sa.String(100))
    description: Mapped[str] = mapped_column(sa.String(1000), default="")
    kind: Mapped[ResourceKind] = mapped_column(StrEnumType(ResourceKind, 16))


class ResourceValue(IdMixin, TimestampMixin, Base):
    """The value of a resource for a scope: all robots, one robot group, or one robot.

    Credentials keep their password encrypted (authenticated encryption, rotatable keys).
    """

    __tablename__ = "resource_value"
    __table_args__ = (sa.UniqueConstraint("resource_id", "scope_key"),)
    account_id: Mapped[uuid.UUID] = account_fk()
    resource_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("resource.id", ondelete="CASCADE"))
    scope: Mapped[ResourceScope] = mapped_column(StrEnumType(ResourceScope, 16))
    robot_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("robot.id", ondelete="CASCADE"), index=True
    )
    robot_group_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("robot_group.id", ondelete="CASCADE"), index=True
    )
    # "all", "group:<uuid>" or "robot:<uuid>": one value per scope, portable uniqueness.
    scope_key: Mapped[str] = mapped_column(sa.String(60))
    text_value: Mapped[str | None] = mapped_column(sa.Text)
    login: Mapped[str | None] = mapped_column(sa.String(255))
    # Credentials: the password's AES-256-GCM ciphertext (with its tag) and nonce, and the data key
    # that encrypted it, wrapped (AES-256-GCM) by the master key ``master_key_id``.
    secret_encrypted: Mapped[bytes | None]
    secret_nonce: Mapped[bytes | None]
    data_key_wrapped: Mapped[bytes | None]
    master_key_id: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    expires_at: Mapped[datetime | None]
    calendar_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("calendar.id", ondelete="SET NULL"), index=True
    )


class MasterKeyCheck(Base):
    """Proof that a configured master key is the one that wrapped the stored data keys.

    Written the first time a service starts with a master key id; every later start decrypts it, so
    a wrong key under a known id stops the service at start instead of failing credential reads.
    """

    __tablename__ = "master_key_check"
    key_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    check_encrypted: Mapped[bytes]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
