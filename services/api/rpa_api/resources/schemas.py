"""Request and response bodies of resource groups, resources and their values.

A credential's password is write-only: no response model here carries it except
``CredentialRevealed``, the answer of the reveal endpoint.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import AwareDatetime, Field, SecretStr

from rpa_api.kit.schemas import Description, In, Login, Name, Out, Patch
from rpa_common.models.enums import ResourceKind, ResourceScope


class ResourceGroupCreate(In):
    name: Name
    description: Description = ""
    folder_id: uuid.UUID | None = None


class ResourceGroupUpdate(Patch):
    not_null = ("name", "description")

    name: Name | None = None
    description: Description | None = None
    folder_id: uuid.UUID | None = None


class ResourceGroupOut(Out):
    id: uuid.UUID
    name: str
    description: str
    folder_id: uuid.UUID | None
    resource_count: int = 0
    created_at: datetime
    updated_at: datetime


class ResourceCreate(In):
    group_id: uuid.UUID
    name: Name = Field(description="Unique in the account (any case): robots ask for resources by name.")
    kind: ResourceKind
    description: Description = ""


class ResourceUpdate(Patch):
    not_null = ("name", "description", "group_id")

    name: Name | None = None
    description: Description | None = None
    group_id: uuid.UUID | None = None


class ResourceOut(Out):
    id: uuid.UUID
    group_id: uuid.UUID
    name: str
    kind: ResourceKind
    description: str
    created_at: datetime
    updated_at: datetime


class ResourceValueSet(In):
    """The value of a resource for one scope (created, or replaced if the scope has one).

    Give the field of the resource's kind: ``text`` (Text), ``login`` + ``password`` (Credentials;
    ``password`` may be left out when replacing a value, keeping the stored one), ``calendar_id``
    (Calendar)."""

    scope: ResourceScope
    robot_id: uuid.UUID | None = Field(None, description="The robot, for scope 'robot'.")
    robot_group_id: uuid.UUID | None = Field(None, description="The robot group, for scope 'robot_group'.")
    text: str | None = Field(None, description="Text resources: the value (at most 65535 UTF-8 bytes).")
    login: Login | None = Field(None, description="Credentials: the login.")
    password: SecretStr | None = Field(
        None, description="Credentials: write-only, encrypted at rest, never returned.", max_length=1024
    )
    expires_at: AwareDatetime | None = Field(None, description="Credentials: optional expiry.")
    calendar_id: uuid.UUID | None = Field(None, description="Calendar resources: the calendar.")


class ResourceValueOut(Out):
    id: uuid.UUID
    resource_id: uuid.UUID
    scope: ResourceScope
    robot_id: uuid.UUID | None
    robot_group_id: uuid.UUID | None
    text: str | None = None
    login: str | None = None
    has_password: bool = False
    expires_at: datetime | None = None
    expired: bool = Field(False, description="Credentials whose expiry has passed.")
    calendar_id: uuid.UUID | None = None
    created_at: datetime
    updated_at: datetime


class ResourceDetail(ResourceOut):
    values: list[ResourceValueOut]


class CredentialRevealed(Out):
    """The one answer that carries a password (``POST .../reveal``, audited)."""

    resource_id: uuid.UUID
    value_id: uuid.UUID
    login: str | None
    password: str
    expires_at: datetime | None
    expired: bool
