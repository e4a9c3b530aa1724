"""Parsing and encoding frames: the only way gateway, robot and tests turn frames into text and back."""

from __future__ import annotations

import json
import re
import typing
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from rpa_protocol.codes import ERROR_BAD_FRAME
from rpa_protocol.frames import (
    GATEWAY_FRAME_TYPES,
    ROBOT_FRAME_TYPES,
    AnyRobotFrame,
    GatewayFrame,
    RobotFrame,
)

_robot: TypeAdapter[AnyRobotFrame] = TypeAdapter(RobotFrame)
_gateway: TypeAdapter[Any] = TypeAdapter(GatewayFrame)
_robot_by_type: dict[str, TypeAdapter[Any]] = {
    cls.model_fields["type"].default: TypeAdapter(cls) for cls in typing.get_args(AnyRobotFrame)
}
"""One adapter a frame type, so a text frame whose ``type`` comes first is validated by its own model
without the union choosing among thirteen."""
_LEADING_TYPE = re.compile(r'\{\s*"type"\s*:\s*"([a-z.]{1,32})"')


class BadFrame(Exception):
    """A frame that cannot be used; ``detail``, ``field`` and ``code`` go back in an ``error`` frame."""

    def __init__(
        self,
        detail: str,
        *,
        field: str | None = None,
        ref_seq: int | None = None,
        code: str = ERROR_BAD_FRAME,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.ref_seq = ref_seq
        self.code = code


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _document(raw: str | bytes | None) -> dict[str, Any]:
    if raw is None:
        raise BadFrame("empty frame")
    if isinstance(raw, bytes):
        raise BadFrame("binary frames are not part of the protocol; send JSON text frames")
    try:
        doc = json.loads(raw, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise BadFrame(f"not JSON: {exc.msg} at position {exc.pos}") from None
    except (ValueError, RecursionError) as exc:
        raise BadFrame(f"not JSON: {exc}" if isinstance(exc, ValueError) else "not JSON") from None
    if not isinstance(doc, dict):
        raise BadFrame("a frame is a JSON object")
    return doc


def _bad(exc: ValidationError, kind: str, ref_seq: int | None) -> BadFrame:
    err = exc.errors()[0]
    loc = list(err.get("loc", ()))
    if loc and loc[0] == kind:  # the discriminated union's tag
        loc = loc[1:]
    where = ".".join(str(p) for p in loc) or "frame"
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return BadFrame(f"{where}: {msg}", field=where, ref_seq=ref_seq)


def parse_robot_frame(raw: str | bytes | None) -> AnyRobotFrame:
    """A robot frame, validated; else ``BadFrame`` naming what is wrong (the gateway's side).

    A text frame is first validated straight from its JSON by pydantic-core (no dict built in
    between), by its type's own adapter when ``type`` comes first: a log line 3.5 -> 1.6 µs. That
    parser takes ``NaN`` and ``Infinity``, which JSON does not have: text holding either goes the
    long way, which refuses them. Any frame the short way does not accept goes the long way too,
    so an error reads the same either way."""
    if type(raw) is str and "NaN" not in raw and "Infinity" not in raw:
        # Robots write ``type`` first (a model's first field): its adapter then, else the union.
        lead = _LEADING_TYPE.match(raw)
        adapter = _robot_by_type.get(lead.group(1), _robot) if lead is not None else _robot
        try:
            return adapter.validate_json(raw)
        except ValidationError:
            pass
    doc = _document(raw)
    seq = doc.get("seq")
    ref_seq = seq if type(seq) is int and seq > 0 else None
    kind = doc.get("type")
    if not isinstance(kind, str):
        raise BadFrame("missing or non-string 'type'", field="type", ref_seq=ref_seq)
    if kind not in ROBOT_FRAME_TYPES:
        raise BadFrame(f"unknown frame type {kind!r}", field="type", ref_seq=ref_seq)
    try:
        return _robot.validate_python(doc)
    except ValidationError as exc:
        raise _bad(exc, kind, ref_seq) from None


def parse_gateway_frame(raw: str | bytes | None) -> Any:
    """A gateway frame (robot's side); None for a type this robot does not know (ignored, by the
    versioning rule). A known type that does not validate raises ``BadFrame``."""
    doc = _document(raw)
    kind = doc.get("type")
    if kind not in GATEWAY_FRAME_TYPES:
        return None
    try:
        return _gateway.validate_python(doc)
    except ValidationError as exc:
        raise _bad(exc, str(kind), None) from None


def encode(frame: BaseModel) -> str:
    """One frame as the JSON text of one WebSocket text frame."""
    return frame.model_dump_json()
