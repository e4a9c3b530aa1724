"""Small asyncio helpers that keep a background loop cancellable.

On Python 3.11, ``asyncio.wait_for`` swallows a cancellation that arrives in the same loop
iteration as the awaited event being set: it returns the result instead of raising. A service loop
that waits with it (``while True: ... wait_for(event.wait(), t)``) then runs on after ``stop()``
cancelled it, and ``stop()`` waits for it forever. ``asyncio.timeout`` has no such race.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_event(event: asyncio.Event, timeout: float) -> bool:  # noqa: ASYNC109
    """Wait up to ``timeout`` seconds for ``event``; whether it was set. A cancellation always raises."""
    try:
        async with asyncio.timeout(max(timeout, 0.0)):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def get_within(queue: asyncio.Queue[T], timeout: float) -> T | None:  # noqa: ASYNC109
    """The next item of ``queue``, or None after ``timeout`` seconds. A cancellation always raises."""
    try:
        async with asyncio.timeout(max(timeout, 0.0)):
            return await queue.get()
    except TimeoutError:
        return None


STOP_WAIT_S = 10.0
"""How long a service's ``stop()`` waits for its cancelled background tasks."""
UNSUBSCRIBE_WAIT_S = 2.0
"""How long a NATS unsubscribe may take on the way out (a connection that no longer answers)."""


async def cancel_all(
    tasks: Collection[asyncio.Task[Any]], wait_s: float = STOP_WAIT_S
) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait for them at most ``wait_s`` seconds: the ones still running then (a
    task cancelled inside a call that no longer answers), for the caller to log. Bounded, so such a
    task never keeps a service from stopping."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return set()
    _, stuck = await asyncio.wait(tasks, timeout=wait_s)
    return stuck


async def unsubscribe(sub: Any, wait_s: float = UNSUBSCRIBE_WAIT_S) -> None:
    """Unsubscribe a NATS subscription on the way out: any error, or no answer within ``wait_s``
    seconds, is left behind (the connection is being closed)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(sub.unsubscribe(), wait_s)
