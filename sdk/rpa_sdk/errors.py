"""The SDK's one exception: an API answer that is not a success, carrying its problem document."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answer (RFC 9457 problem+json): ``status``, ``title``, ``detail`` and the ``field`` at fault."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.title: str = str(problem.get("title") or "Error")
        self.detail: str = str(problem.get("detail") or self.title)
        errors = problem.get("errors") or []
        first = errors[0] if errors and isinstance(errors[0], dict) else {}
        self.field: str | None = first.get("field")
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"{self.status} {self.title}: {self.detail}{where}"
