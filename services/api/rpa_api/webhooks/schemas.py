"""Request and response bodies of webhook subscriptions and deliveries (a secret only in *Created)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator

from rpa_api.kit.schemas import Description, In, Out, Patch
from rpa_common.events import EVENT_TYPES

Url = str


def _check_url(value: str) -> str:
    # SSRF caution: only http(s); the operator decides which hosts are reachable (docs/api-guide.md).
    if not value.startswith(("http://", "https://")) or len(value) > 2000 or len(value) < 10:
        raise ValueError("must be an http:// or https:// URL of at most 2000 characters")
    return value


def _check_types(value: list[str]) -> list[str]:
    unknown = [t for t in value if t not in EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event types {unknown}; known: {', '.join(EVENT_TYPES)}")
    if not value:
        raise ValueError("name at least one event type")
    return sorted(set(value))


class SubscriptionCreate(In):
    url: str = Field(description="Where events are POSTed (http or https)")
    event_types: list[str] = Field(max_length=len(EVENT_TYPES) * 2, description="A subset of the event types")
    folder_id: uuid.UUID | None = Field(None, description="Only events of objects in this folder")
    description: Description = ""
    enabled: bool = True

    _url = field_validator("url")(_check_url)
    _types = field_validator("event_types")(_check_types)


class SubscriptionUpdate(Patch):
    not_null = ("url", "event_types", "description", "enabled")

    url: str | None = None
    event_types: list[str] | None = None
    folder_id: uuid.UUID | None = None
    description: Description | None = None
    enabled: bool | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)

    @field_validator("event_types")
    @classmethod
    def _types(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_types(value)


class SubscriptionOut(Out):
    id: uuid.UUID
    url: str
    event_types: list[str]
    folder_id: uuid.UUID | None
    description: str
    enabled: bool
    state: Literal["active", "paused"]
    paused_reason: str | None
    paused_at: datetime | None
    consecutive_failures: int
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime


class SubscriptionCreated(SubscriptionOut):
    secret: str = Field(description="Signs every delivery; shown in this answer only")


class SecretRotated(Out):
    id: uuid.UUID
    secret: str = Field(description="The new secret, shown in this answer only; the old one stops at once")


class DeliveryOut(Out):
    id: uuid.UUID
    event_id: int
    event_type: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime
    last_attempt_at: datetime | None
    delivered_at: datetime | None


class PingResult(Out):
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: int
