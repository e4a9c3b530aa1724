"""When the reference robot tries its gateway again after a failed connection (rpa_robot.client.next_wait)."""

from __future__ import annotations

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from rpa_robot.client import next_wait


def refused(status: int, **headers: str) -> InvalidStatus:
    return InvalidStatus(Response(status, "", Headers(headers), b""))


@pytest.mark.parametrize("exc", [OSError("connection refused"), TimeoutError(), refused(502), refused(503)])
def test_no_answer_backs_off_exponentially_with_full_jitter(exc: BaseException) -> None:
    waits = []
    backoff = 0.5
    for _ in range(8):
        wait, after = next_wait(exc, backoff, 30.0)
        assert 0.1 <= wait <= backoff
        assert after == min(30.0, backoff * 2)
        waits.append(wait)
        backoff = after
    assert backoff == 30.0
    assert len(set(waits)) > 1  # jittered: a fleet does not come back at one instant


def test_a_503_with_retry_after_is_honoured_without_growing_the_backoff() -> None:
    # The gateway is up and its database is away (a fail-over): come back when it says, so the
    # robot is connected again about that long after the database is, however long the outage was.
    backoff = 0.5
    for _ in range(20):
        wait, backoff = next_wait(refused(503, **{"Retry-After": "2"}), backoff, 30.0)
        assert 0.1 <= wait <= 2.0
    assert backoff == 0.5


def test_retry_after_is_bounded_by_the_robots_own_limits() -> None:
    wait, _ = next_wait(refused(503, **{"Retry-After": "3600"}), 0.5, 30.0)
    assert wait <= 30.0
    wait, _ = next_wait(refused(503, **{"Retry-After": "0"}), 0.5, 30.0)
    assert 0.1 <= wait <= 0.2
    # Not a number of seconds (an HTTP date, garbage): the exponential backoff applies.
    wait, after = next_wait(refused(503, **{"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), 4.0, 30.0)
    assert wait <= 4.0 and after == 8.0
