"""Request and response bodies of terminal servers and the unattended accounts they host.

An unattended account's password is write-only: no response carries it (``has_password`` says
whether one is set).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import Field, SecretStr, StringConstraints

from rpa_api.kit.schemas import Description, In, Name, Out, Patch


class TerminalServerCreate(In):
    name: Name
    hostname: Annotated[str, StringConstraints(strip_whitespace=True, max_length=255)] = ""
    description: Description = ""
    coordinator_id: uuid.UUID | None = Field(None, description="A robot of role coordinator.")
    max_sessions: int = Field(10, ge=1, le=10_000)


class TerminalServerUpdate(Patch):
    not_null = ("name", "hostname", "description", "max_sessions")

    name: Name | None = None
    hostname: Annotated[str, StringConstraints(strip_whitespace=True, max_length=255)] | None = None
    description: Description | None = None
    coordinator_id: uuid.UUID | None = None
    max_sessions: int | None = Field(None, ge=1, le=10_000)


class UnattendedAccountCreate(In):
    login: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
    domain: Annotated[str, StringConstraints(strip_whitespace=True, max_length=255)] | None = None
    password: SecretStr | None = Field(
        None, description="Write-only: encrypted at rest, never returned.", max_length=1024
    )
    robot_id: uuid.UUID | None = Field(None, description="An unattended robot; at most one account each.")


class UnattendedAccountUpdate(Patch):
    not_null = ("login",)

    login: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)] | None = (
        None
    )
    domain: Annotated[str, StringConstraints(strip_whitespace=True, max_length=255)] | None = None
    password: SecretStr | None = Field(
        None, description="Write-only; null removes the stored password.", max_length=1024
    )
    robot_id: uuid.UUID | None = None


class UnattendedAccountOut(Out):
    id: uuid.UUID
    terminal_server_id: uuid.UUID
    login: str
    domain: str | None
    robot_id: uuid.UUID | None
    has_password: bool
    created_at: datetime
    updated_at: datetime


class TerminalServerOut(Out):
    id: uuid.UUID
    name: str
    hostname: str
    description: str
    coordinator_id: uuid.UUID | None
    max_sessions: int
    created_at: datetime
    updated_at: datetime


class TerminalServerDetail(TerminalServerOut):
    accounts: list[UnattendedAccountOut]
