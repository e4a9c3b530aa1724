"""PATCH bodies: only the fields given change, and the audit record says from what to what."""

from __future__ import annotations

from typing import Any

from rpa_common.errors import Unprocessable


def require_not_null(fields: dict[str, Any], *names: str) -> None:
    """These fields may be left out of a PATCH, but not set to null (422 naming the field)."""
    for name in names:
        if name in fields and fields[name] is None:
            raise Unprocessable(f"{name} cannot be null", field=name)


def apply_patch(obj: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """Set each field that differs on ``obj``; returns ``{name: {"from": old, "to": new}}``.

    ``fields`` is ``body.model_dump(exclude_unset=True)`` after the domain's own checks.
    """
    changes: dict[str, Any] = {}
    for name, value in fields.items():
        old = getattr(obj, name)
        if old != value:
            changes[name] = {"from": old, "to": value}
            setattr(obj, name, value)
    return changes
