"""What a request body's schema accepts, the API accepts: white space is no exception.

A trimmed field (``strip_whitespace``) with ``min_length=1`` refuses "\\t" after trimming. Unless its
schema says so too (a pattern such as ``\\S``), a client that follows the schema meets a 422 the
schema did not announce; schemathesis reports that as "schema-valid request rejected". This walks
every field of every request body and tries the blank strings on both the schema and the model.
"""

from __future__ import annotations

from typing import Annotated, Any

import jsonschema
import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from rpa_api.app import create_app
from rpa_common.settings import Settings

FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER
BLANKS = ["\t", " ", "\u0085", "\u00a0", " \n "]


def _subclasses(cls: type[BaseModel]) -> list[type[BaseModel]]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def _body_models() -> dict[str, type[BaseModel]]:
    """The pydantic models of every request body the OpenAPI document names."""
    document = create_app(Settings(environment="test")).openapi()
    names = set()
    for item in document["paths"].values():
        for operation in item.values():
            for media in operation.get("requestBody", {}).get("content", {}).values():
                ref = media.get("schema", {}).get("$ref", "")
                if ref:
                    names.add(ref.rsplit("/", 1)[-1])
    models = {}
    for cls in _subclasses(BaseModel):
        if cls.__module__.startswith("rpa_api.") and cls.__name__ in names:
            models[f"{cls.__module__.removeprefix('rpa_api.')}.{cls.__name__}"] = cls
    return models


def _schema_accepts(schema: dict[str, Any], value: str) -> bool:
    # Formats count, as they do for schemathesis: " " is no uuid nor date-time.
    return jsonschema.Draft202012Validator(schema, format_checker=FORMATS).is_valid(value)


def _model_accepts(adapter: TypeAdapter[Any], value: str) -> bool:
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def test_request_bodies_are_found() -> None:
    # The walk below must see the bodies it is meant to check.
    models = _body_models()
    found = {name.rsplit(".", 1)[-1] for name in models}
    assert {"UnattendedAccountUpdate", "RobotUpdate", "FolderCreate"} <= found, sorted(found)
    assert len(models) > 40, sorted(found)


@pytest.mark.parametrize("model", sorted(_body_models().items()), ids=lambda item: item[0])
def test_a_blank_string_the_schema_accepts_is_accepted(model: tuple[str, type[BaseModel]]) -> None:
    _, cls = model
    document = cls.model_json_schema(mode="validation")
    wrong = []
    for name, field in cls.model_fields.items():
        annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        adapter: TypeAdapter[Any] = TypeAdapter(annotation)
        schema = {"$defs": document.get("$defs", {}), **document["properties"][field.alias or name]}
        for blank in BLANKS:
            if _schema_accepts(schema, blank) and not _model_accepts(adapter, blank):
                wrong.append(f"{name}={blank!r}")
    assert not wrong, f"the schema accepts these, the model refuses them: {wrong}"
