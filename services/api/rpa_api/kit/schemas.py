"""Base models and field types shared by the domains' ``schemas.py``."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    GetJsonSchemaHandler,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

# Trimmed names that must hold a non-blank character. The pattern says in the schema what the
# trimming does, so a client reading the schema never sends white space only and meets a 422.
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=r"\S")]
Login = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255, pattern=r"\S")]
Description = Annotated[str, StringConstraints(max_length=1000)]

_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def _iso_only(value: Any) -> Any:
    # pydantic reads a number as seconds since 1970; the schema promises an ISO 8601 date-time.
    if isinstance(value, str) and _NUMBER.match(value):
        raise ValueError("must be an ISO 8601 date-time, e.g. 2024-05-01T12:00:00Z")
    return value


# A date-time in a query string: ISO 8601 only, as its schema (format date-time) says.
QueryDatetime = Annotated[datetime, BeforeValidator(_iso_only)]


class In(BaseModel):
    """Request bodies reject unknown fields: a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    """Response bodies are read from ORM objects or rows by attribute."""

    model_config = ConfigDict(from_attributes=True)


class Patch(In):
    """A PATCH body: only the fields given change.

    The fields named in ``not_null`` may be left out but never set to null (a column that cannot be
    empty): null is refused with a 422 naming the field, and their schema has no null, so the
    OpenAPI document says exactly what is accepted.
    """

    not_null: ClassVar[tuple[str, ...]] = ()

    @field_validator("*")
    @classmethod
    def _refuse_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name in cls.not_null:
            raise ValueError("may be left out, but not null")
        return value

    @classmethod
    def __get_pydantic_json_schema__(cls, core: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core))
        for name in cls.not_null:
            prop = schema["properties"][name]
            options = [o for o in prop.pop("anyOf", []) if o.get("type") != "null"]
            if len(options) == 1:
                prop.update(options[0])
            elif options:
                prop["anyOf"] = options
            if prop.get("default", ...) is None:
                del prop["default"]
        return schema
