"""Background loops stay cancellable when their wake-up and the cancellation arrive together.

With ``asyncio.wait_for`` (Python 3.11) the loop below swallowed the cancellation and ran on, and
the scheduler's ``stop()`` waited for it forever (a hang seen in CI on the events relay)."""

import asyncio

import pytest

from rpa_common.aio import get_within, wait_event


async def test_a_loop_woken_and_cancelled_in_the_same_step_stops() -> None:
    event = asyncio.Event()
    passes = 0

    async def loop() -> None:
        nonlocal passes
        while True:
            await wait_event(event, 30)
            event.clear()
            passes += 1

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)  # the loop waits on the event
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(2):
            await task
    assert task.cancelled()


async def test_a_queue_reader_cancelled_as_an_item_arrives_stops() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()

    async def reader() -> None:
        while True:
            await get_within(queue, 30)

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.01)
    queue.put_nowait(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(2):
            await task


async def test_the_helpers_report_a_timeout_and_a_wake_up() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True
    queue: asyncio.Queue[int] = asyncio.Queue()
    assert await get_within(queue, 0.01) is None
    queue.put_nowait(7)
    assert await get_within(queue, 0.01) == 7
