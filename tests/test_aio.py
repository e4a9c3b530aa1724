"""Background loops stay cancellable when their wake-up and the cancellation arrive together.

With ``asyncio.wait_for`` (Python 3.11) the loop below swallowed the cancellation and ran on, and
the scheduler's ``stop()`` waited for it forever (a hang seen in CI on the events relay)."""

import asyncio
import contextlib

import pytest

from rpa_common.aio import cancel_all, get_within, unsubscribe, wait_event


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


async def test_stopping_is_bounded_by_a_task_or_an_unsubscribe_that_never_ends() -> None:
    async def obedient() -> None:
        await asyncio.sleep(3600)

    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # swallowed, as a call on a dead connection may
            await asyncio.sleep(3600)
        await asyncio.sleep(1.0)

    class DeadSubscription:
        async def unsubscribe(self) -> None:
            await asyncio.sleep(3600)

    tasks = [asyncio.create_task(obedient()), asyncio.create_task(stubborn())]
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    stuck = await cancel_all(tasks, wait_s=0.2)
    await unsubscribe(DeadSubscription(), wait_s=0.2)
    assert loop.time() - started < 2.0
    assert stuck == {tasks[1]} and tasks[0].cancelled()
    assert await cancel_all([]) == set()
    await tasks[1]
