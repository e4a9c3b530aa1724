"""``RPA_EVENTS_ENABLED=false`` turns the event outbox off: a change records no event (what
``bench/dispatch.py`` compares with the default, on)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from rpa_common import events
from rpa_common.models.base import utcnow
from rpa_common.settings import get_settings


class Session:
    """What ``record`` needs of an ``AsyncSession``: ``add``."""

    def __init__(self) -> None:
        self.added: list[Any] = []

    def add(self, row: Any) -> None:
        self.added.append(row)


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _record(session: Session) -> None:
    events.record(
        session, "job.state", account_id=uuid.uuid4(), object_id=uuid.uuid4(), at=utcnow(), data={"n": 1}
    )


def test_events_are_recorded_by_default_and_not_when_switched_off(
    monkeypatch: pytest.MonkeyPatch, fresh_settings: None
) -> None:
    monkeypatch.delenv("RPA_EVENTS_ENABLED", raising=False)
    on = Session()
    _record(on)
    assert [row.type for row in on.added] == ["job.state"]

    monkeypatch.setenv("RPA_EVENTS_ENABLED", "false")
    get_settings.cache_clear()
    off = Session()
    _record(off)
    assert off.added == []
    # A wrong type is still refused: the switch hides no programming error.
    with pytest.raises(ValueError, match="not an event type"):
        events.record(off, "job.nope", account_id=uuid.uuid4(), object_id=None, at=utcnow(), data={})
