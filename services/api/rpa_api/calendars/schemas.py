"""Request and response bodies of calendars: the weekly rule and its exceptions, in a time zone."""

from __future__ import annotations

import uuid
import zoneinfo
from datetime import date, datetime
from functools import lru_cache
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, StrictBool, StringConstraints

from rpa_api.kit.schemas import Description, In, Name, Out, Patch


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _zone(value: str) -> str:
    if value not in _zones():
        raise ValueError(f"unknown time zone {value!r}; use an IANA name such as 'Europe/Paris' or 'UTC'")
    return value


def _iso_date(value: object) -> object:
    # pydantic would read a number as days (or seconds) since 1970; the schema promises an ISO date.
    if not isinstance(value, str | date):
        raise ValueError("must be an ISO 8601 date, e.g. 2026-12-25")
    return value


def _weekdays(value: list[int]) -> list[int]:
    if len(set(value)) != len(value):
        raise ValueError("each ISO weekday at most once")
    return sorted(value)


# Not an enum in the document: zone names such as "GMT+0" and "GMT-0" make generated clients' enums
# clash. The pattern and the description say what is accepted; the 422 names the field.
TimeZone = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_+\-/]+$"),
    AfterValidator(_zone),
    Field(
        description="An IANA time zone known to the server's time zone database, e.g. 'Europe/Paris', 'UTC'."
    ),
]
Weekday = Annotated[int, Field(ge=1, le=7, description="ISO weekday: 1 = Monday ... 7 = Sunday")]
WeekendDays = Annotated[
    list[Weekday], Field(max_length=7, json_schema_extra={"uniqueItems": True}), AfterValidator(_weekdays)
]


class CalendarDayIn(In):
    day: Annotated[date, BeforeValidator(_iso_date)] = Field(description="An ISO 8601 date, e.g. 2026-12-25.")
    working: StrictBool = Field(False, description="False: a holiday; true: a worked weekend day.")
    note: Annotated[str, StringConstraints(max_length=200)] = ""


def _unique_days(value: list[CalendarDayIn]) -> list[CalendarDayIn]:
    # A JSON Schema cannot say "unique by one property": the field's description says it.
    seen: set[date] = set()
    for d in value:
        if d.day in seen:
            raise ValueError(f"day {d.day.isoformat()} is given twice")
        seen.add(d.day)
    return sorted(value, key=lambda d: d.day)


Days = Annotated[
    list[CalendarDayIn],
    Field(max_length=3700, description="Exception days, each day at most once."),
    AfterValidator(_unique_days),
]


class CalendarCreate(In):
    name: Name
    description: Description = ""
    folder_id: uuid.UUID | None = None
    time_zone: TimeZone = "UTC"
    weekend_days: WeekendDays = Field(default_factory=lambda: [6, 7])
    days: Days = Field(default_factory=list, description="Exceptions to the weekly rule.")


class CalendarUpdate(Patch):
    not_null = ("name", "description", "time_zone", "weekend_days", "days")

    name: Name | None = None
    description: Description | None = None
    folder_id: uuid.UUID | None = None
    time_zone: TimeZone | None = None
    weekend_days: WeekendDays | None = None
    days: Days | None = Field(None, description="Replaces every exception day.")


class CalendarDayOut(Out):
    day: date
    working: bool
    note: str


class CalendarOut(Out):
    id: uuid.UUID
    name: str
    description: str
    folder_id: uuid.UUID | None
    time_zone: str
    weekend_days: list[int]
    created_at: datetime
    updated_at: datetime


class CalendarDetail(CalendarOut):
    days: list[CalendarDayOut]
