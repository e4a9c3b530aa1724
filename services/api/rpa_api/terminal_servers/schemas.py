"""Request and response bodies of terminal servers and the unattended accounts they host.

An unattended account's password is write-only: no response carries it (``has_password`` says
whether one is set).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import Field, SecretStr, StringConstraints

from rpa_api.kit.schemas import Description, In, Login, Name, Out, Patch
from rpa_common.models.enums import ShellMode

Fingerprint = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        to_lower=True,
        max_length=200,
        pattern=r"^[sS][hH][aA](1|256|384|512):([0-9a-fA-F]{2}:)*[0-9a-fA-F]{2}$",
    ),
]
"""A certificate fingerprint as FreeRDP's ``/cert:fingerprint:`` takes it: ``sha256:ab:cd:...``."""
PublicKey = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z0-9_-]{43}$")]
"""A coordinator's X25519 public key, URL-safe base64 without padding (rpa_common.sealing)."""
ShellCommand = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=1000, pattern=r"^[^\r\n]*\S[^\r\n]*$"),
]

_RDP_FIELDS_DOC = {
    "rdp_port": "RDP port of the server (the coordinator's rdp driver connects to hostname:rdp_port).",
    "cert_fingerprint": "The server certificate's fingerprint, pinned by the RDP client (sha256:ab:cd:...).",
    "cert_ignore": "Accept any server certificate: for test servers only (no fingerprint to pin).",
    "shell_mode": "command: the robot's command runs as the RDP alternate shell; startup: the account's "
    "own session start-up starts the robot.",
    "shell_command": "The robot's command for shell_mode=command (no secret; the coordinator adds --door); "
    "default: the coordinator's RPA_COORDINATOR_ROBOT_SHELL.",
    "public_key": "The coordinator's public key for sealed session credentials; its coordinator registers "
    "it at start.",
}


class TerminalServerCreate(In):
    name: Name
    hostname: Annotated[str, StringConstraints(strip_whitespace=True, max_length=255)] = ""
    description: Description = ""
    coordinator_id: uuid.UUID | None = Field(None, description="A robot of role coordinator.")
    max_sessions: int = Field(10, ge=1, le=10_000)
    rdp_port: int = Field(3389, ge=1, le=65535, description=_RDP_FIELDS_DOC["rdp_port"])
    cert_fingerprint: Fingerprint | None = Field(None, description=_RDP_FIELDS_DOC["cert_fingerprint"])
    cert_ignore: bool = Field(False, description=_RDP_FIELDS_DOC["cert_ignore"])
    shell_mode: ShellMode = Field(ShellMode.COMMAND, description=_RDP_FIELDS_DOC["shell_mode"])
    shell_command: ShellCommand | None = Field(None, description=_RDP_FIELDS_DOC["shell_command"])
    public_key: PublicKey | None = Field(None, description=_RDP_FIELDS_DOC["public_key"])


class TerminalServerUpdate(Patch):
    not_null = ("name", "hostname", "description", "max_sessions", "rdp_port", "cert_ignore", "shell_mode")

    name: Name | None = None
    hostname: Annotated[str, StringConstraints(strip_whitespace=True, max_length=255)] | None = None
    description: Description | None = None
    coordinator_id: uuid.UUID | None = None
    max_sessions: int | None = Field(None, ge=1, le=10_000)
    rdp_port: int | None = Field(None, ge=1, le=65535, description=_RDP_FIELDS_DOC["rdp_port"])
    cert_fingerprint: Fingerprint | None = Field(None, description=_RDP_FIELDS_DOC["cert_fingerprint"])
    cert_ignore: bool | None = Field(None, description=_RDP_FIELDS_DOC["cert_ignore"])
    shell_mode: ShellMode | None = Field(None, description=_RDP_FIELDS_DOC["shell_mode"])
    shell_command: ShellCommand | None = Field(None, description=_RDP_FIELDS_DOC["shell_command"])
    public_key: PublicKey | None = Field(None, description=_RDP_FIELDS_DOC["public_key"])


class UnattendedAccountCreate(In):
    login: Login
    domain: Annotated[str, StringConstraints(strip_whitespace=True, max_length=255)] | None = None
    password: SecretStr | None = Field(
        None, description="Write-only: encrypted at rest, never returned.", max_length=1024
    )
    robot_id: uuid.UUID | None = Field(None, description="An unattended robot; at most one account each.")


class UnattendedAccountUpdate(Patch):
    not_null = ("login",)

    login: Login | None = None
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
    rdp_port: int
    cert_fingerprint: str | None
    cert_ignore: bool
    shell_mode: ShellMode
    shell_command: str | None
    public_key: str | None
    created_at: datetime
    updated_at: datetime


class TerminalServerDetail(TerminalServerOut):
    accounts: list[UnattendedAccountOut]
