"""The ids the reference robot makes for log lines and screenshots: UUID version 7, in time order."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from rpa_robot import sdk
from rpa_robot.ids import time_ordered_id


def test_ids_are_version_7_and_sort_by_their_millisecond() -> None:
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    ids = [time_ordered_id(now_ms + n) for n in range(0, 5_000, 7)]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    # Sorted as the database sorts them (bytes, or their text): in the order of their milliseconds.
    assert sorted(ids, key=lambda i: i.bytes) == ids
    assert sorted(ids, key=str) == ids
    # The first 48 bits are the time.
    assert ids[0].int >> 80 == now_ms
    now = time_ordered_id()
    assert abs((now.int >> 80) - int(datetime.now(UTC).timestamp() * 1000)) < 1_000


def test_ids_of_one_millisecond_do_not_collide() -> None:
    ids = {time_ordered_id(1_700_000_000_000) for _ in range(100_000)}
    assert len(ids) == 100_000


def test_the_sdk_logs_lines_with_time_ordered_ids() -> None:
    # Outside a robot the lines go to stderr; the ids are made the same way.
    first, second = uuid.UUID(sdk.log("one")), uuid.UUID(sdk.log("two"))
    assert first.version == 7 and second.version == 7
    assert first.int >> 80 <= second.int >> 80
