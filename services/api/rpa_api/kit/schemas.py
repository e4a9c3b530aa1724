"""Base models and field types shared by the domains' ``schemas.py``."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Description = Annotated[str, StringConstraints(max_length=1000)]


class In(BaseModel):
    """Request bodies reject unknown fields: a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    """Response bodies are read from ORM objects or rows by attribute."""

    model_config = ConfigDict(from_attributes=True)
