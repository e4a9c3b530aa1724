"""Bodies of roles: permissions as ``{"object", "action"}`` pairs, and the folders a role sees."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from rpa_api.kit.schemas import Name
from rpa_common.models.enums import PermissionAction, PermissionObject

Description = Annotated[str, StringConstraints(max_length=1000)]


class _In(BaseModel):
    """Request bodies reject unknown fields: a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid")


class Permission(BaseModel):
    """One allowed action on one object; unknown objects or actions are refused (422)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    object: PermissionObject
    action: PermissionAction


class RoleCreate(_In):
    name: Name
    description: Description = ""
    permissions: Annotated[
        list[Permission], Field(max_length=len(PermissionObject) * len(PermissionAction))
    ] = []
    all_folders: StrictBool = Field(
        True, description="The role sees every folder (and objects with none); false to give folder_ids"
    )
    folder_ids: Annotated[list[uuid.UUID], Field(max_length=1000)] = Field(
        default_factory=list, description="The folders the role sees, when all_folders is false"
    )


class RoleUpdate(_In):
    """Only the fields given change; ``permissions`` and ``folder_ids`` are replaced as a whole."""

    name: Name | None = None
    description: Description | None = None
    permissions: (
        Annotated[list[Permission], Field(max_length=len(PermissionObject) * len(PermissionAction))] | None
    ) = None
    all_folders: StrictBool | None = None
    folder_ids: Annotated[list[uuid.UUID], Field(max_length=1000)] | None = None


class RoleOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str
    builtin: bool
    all_folders: bool
    folder_ids: list[uuid.UUID]
    permissions: list[Permission]
    created_at: datetime
    updated_at: datetime


class Catalogue(BaseModel):
    """Every object and action a permission can name."""

    objects: list[PermissionObject]
    actions: list[PermissionAction]
