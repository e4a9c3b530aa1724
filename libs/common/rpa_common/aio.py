"""Small asyncio helpers that keep a background loop cancellable.

On Python 3.11, ``asyncio.wait_for`` swallows a cancellation that arrives in the same loop
iteration as the awaited event being set: it returns the result instead of raising. A service loop
that waits with it (``while True: ... wait_for(event.wait(), t)``) then runs on after ``stop()``
cancelled it, and ``stop()`` waits for it forever. ``asyncio.timeout`` has no such race.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

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
