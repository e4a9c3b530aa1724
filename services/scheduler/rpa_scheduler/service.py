"""The scheduler's background work: NATS wake-ups, the dispatch loop, the sweeps, the triggers.

The dispatch loop waits on one event. ``JOB_CREATED``, a ``JOB_STATE`` that freed a robot and a
``ROBOT_STATUS`` that made one available set it (queue group ``SCHEDULER_QUEUE``: one replica per
message), and so does every sweep, so a lost message only delays dispatch by ``sweep_interval_s``.
Wake-ups that arrive during a pass coalesce into one more pass: there is no polling delay on the
hot path.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime
from typing import Any

import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from rpa_common import metrics
from rpa_common.aio import cancel_all, unsubscribe, wait_event
from rpa_common.models.base import utcnow
from rpa_common.models.enums import JobState, RobotStatus
from rpa_common.nats import subjects
from rpa_common.nats.messages import JobStateChanged, RobotStatusChanged, SessionStateReport, TriggerChanged
from rpa_common.rollups import rollup_pass
from rpa_common.service import ServiceContext
from rpa_scheduler.dispatch import dispatch_pass
from rpa_scheduler.gauges import GaugeSampler
from rpa_scheduler.relay import ensure_stream, relay_pass
from rpa_scheduler.retention import retention_pass
from rpa_scheduler.sweeps import SWEEP_BATCH, apply_session_report, next_deadline, sweep_all, sweep_deadlines
from rpa_scheduler.triggers import TriggerScheduler
from rpa_scheduler.webhooks import WebhookService

log = structlog.get_logger(__name__)

FREED_WAKE_DELAY_S = 0.002
"""A job's end arrives as JOB_STATE then ROBOT_STATUS Ready, back to back: waiting this long turns
the two wake-ups into one pass. New jobs (JOB_CREATED) wake the dispatcher at once."""


DEADLINE_SLACK_S = 0.01
"""The deadline timer wakes this long after a deadline (it fires what is strictly past)."""
DEADLINE_RETRY_S = 0.2
"""A due deadline whose job row was busy is tried again after this long."""


class Scheduler:
    """One replica's scheduler; ``start`` then ``stop``."""

    def __init__(
        self,
        ctx: ServiceContext,
        *,
        triggers: bool = True,
        sweeps: bool = True,
        gauges: bool = True,
        webhooks: bool = True,
        relay: bool = True,
        queue: str = subjects.SCHEDULER_QUEUE,
    ) -> None:
        self.ctx = ctx
        self.queue = queue
        self.wake = asyncio.Event()
        self.triggers = TriggerScheduler(ctx) if triggers else None
        self.sweeps = sweeps
        self.gauges = GaugeSampler(ctx) if gauges else None
        self.webhooks = WebhookService(ctx) if webhooks else None
        self.relay = relay
        self.relay_wake = asyncio.Event()
        self.passes = 0
        self._subs: list[Subscription] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._wake_soon: asyncio.TimerHandle | None = None
        self.deadline_wake = asyncio.Event()
        self._next_deadline: datetime | None = None

    async def start(self) -> None:
        nc = self.ctx.nc
        q = self.queue
        self._subs = [
            await nc.subscribe(subjects.JOB_CREATED, queue=q, cb=self._on_job_created),
            await nc.subscribe(subjects.JOB_STATE, queue=q, cb=self._on_job_state),
            await nc.subscribe(subjects.ROBOT_STATUS, queue=q, cb=self._on_robot_status),
            await nc.subscribe(subjects.SESSION_STATE, queue=q, cb=self._on_session_state),
        ]
        if self.triggers is not None:
            # Fan-out: every replica keeps its own copy of the schedule.
            self._subs.append(await nc.subscribe(subjects.TRIGGER_CHANGED, cb=self._on_trigger_changed))
            self.triggers.start()
            try:
                await self.triggers.reload()
            except Exception:
                log.exception("triggers.reload_failed")
        self._tasks.append(asyncio.create_task(self._dispatch_loop(), name="dispatch"))
        if self.sweeps:
            self._tasks.append(asyncio.create_task(self._sweep_loop(), name="sweeps"))
            self._tasks.append(asyncio.create_task(self._deadline_loop(), name="deadlines"))
            self._tasks.append(asyncio.create_task(self._retention_loop(), name="retention"))
            if self.ctx.settings.statistics_rollup_interval_s > 0:
                self._tasks.append(asyncio.create_task(self._rollup_loop(), name="rollups"))
        if self.gauges is not None:
            self._tasks.append(asyncio.create_task(self.gauges.run(), name="gauges"))
        if self.webhooks is not None:
            self.webhooks.start()
        if self.relay:
            self._tasks.append(asyncio.create_task(self._relay_loop(), name="events-relay"))
        self.wake.set()  # recover whatever waited while no scheduler ran
        log.info("scheduler.started")

    async def stop(self) -> None:
        for sub in self._subs:
            await unsubscribe(sub)
        self._subs.clear()
        # A task stuck in a database call whose connection no longer answers is left to the pool.
        for task in await cancel_all(self._tasks):
            log.warning("scheduler.task_did_not_stop", task=task.get_name())
        self._tasks.clear()
        if self._wake_soon is not None:
            self._wake_soon.cancel()
        if self.triggers is not None:
            await self.triggers.aclose()
        if self.webhooks is not None:
            await self.webhooks.stop()
        log.info("scheduler.stopped", dispatch_passes=self.passes)

    # NATS handlers: decode, decide, set the event. Never raise into the NATS client.

    async def _on_job_created(self, msg: Msg) -> None:
        self.wake.set()
        self.relay_wake.set()

    def _wake_shortly(self) -> None:
        if self._wake_soon is None:

            def fire() -> None:
                self._wake_soon = None
                self.wake.set()

            self._wake_soon = asyncio.get_running_loop().call_later(FREED_WAKE_DELAY_S, fire)

    async def _on_job_state(self, msg: Msg) -> None:
        self.relay_wake.set()
        try:
            event = JobStateChanged.decode(msg.data)
        except ValueError:
            return
        if event.to_state.is_final:
            metrics.JOBS_FINISHED.labels(event.to_state.value).inc()
        if event.deadline_at is not None:
            self.note_deadline(event.deadline_at)
        if event.to_state.is_final or event.to_state == JobState.PENDING:
            self._wake_shortly()

    async def _on_robot_status(self, msg: Msg) -> None:
        self.relay_wake.set()
        try:
            event = RobotStatusChanged.decode(msg.data)
        except ValueError:
            return
        # Working means the robot has a job; a robot freed by a job's end also wakes us by JOB_STATE.
        if event.status == RobotStatus.READY:
            self._wake_shortly()

    async def _on_session_state(self, msg: Msg) -> None:
        try:
            report = SessionStateReport.decode(msg.data)
        except ValueError:
            log.warning("session_state.undecodable")
            return
        try:
            await apply_session_report(self.ctx, report)
        except Exception:
            # The sweep fails the job from the database anyway (session timeout).
            log.exception("session_state.apply_failed", session_id=str(report.session_id))

    async def _on_trigger_changed(self, msg: Msg) -> None:
        self.relay_wake.set()
        if self.triggers is None:
            return
        try:
            change = TriggerChanged.decode(msg.data)
            await self.triggers.reload_one(change.trigger_id)
        except Exception:
            log.exception("triggers.reload_failed")

    # Loops

    async def _dispatch_loop(self) -> None:
        retried = False
        while True:
            await self.wake.wait()
            self.wake.clear()
            try:
                result = await dispatch_pass(self.ctx)
                self.passes += 1
                # A job skipped while someone else held its robot's row can go once that commits:
                # one more pass, not a loop (the sweep covers the rest).
                if result.skipped_busy and not retried:
                    retried = True
                    await asyncio.sleep(0.005)
                    self.wake.set()
                else:
                    retried = False
            except Exception:
                log.exception("dispatch.pass_failed")
                await asyncio.sleep(min(1.0, self.ctx.settings.sweep_interval_s))
                self.wake.set()

    def note_deadline(self, at: datetime) -> None:
        """A job got a stop or interrupt deadline: fire it on time, not at the next sweep."""
        if self._next_deadline is None or at < self._next_deadline:
            self._next_deadline = at
            self.deadline_wake.set()

    async def _deadline_loop(self) -> None:
        """Sleeps until the next stop/interrupt deadline and fires it (``sweep_deadlines``).

        The next deadline comes from the database every ``sweep_interval_s`` (deadlines set while
        another replica got the message, or whose message was lost) and from ``JOB_STATE`` messages
        at once (``note_deadline``), so a deadline fires within ``DEADLINE_SLACK_S`` of its time.
        """
        every = self.ctx.settings.sweep_interval_s
        loop = asyncio.get_running_loop()
        checked = -math.inf
        while True:
            try:
                self.deadline_wake.clear()
                if loop.time() - checked >= every:
                    found = await next_deadline(self.ctx)
                    checked = loop.time()
                    if found is not None and (self._next_deadline is None or found < self._next_deadline):
                        self._next_deadline = found
                due = self._next_deadline
                if due is not None and due <= utcnow():
                    self._next_deadline = None
                    fired = 0
                    while (n := await sweep_deadlines(self.ctx)) > 0:
                        fired += n
                        if n < SWEEP_BATCH:
                            break
                    checked = -math.inf  # the next one, now
                    if not fired:
                        # Its row was busy (SKIP LOCKED): try again shortly, not in a tight loop.
                        await asyncio.sleep(DEADLINE_RETRY_S)
                    continue
                delay = every if due is None else min(every, (due - utcnow()).total_seconds())
                await wait_event(self.deadline_wake, max(delay, 0.0) + DEADLINE_SLACK_S)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("deadlines.failed")
                await asyncio.sleep(min(1.0, every))

    async def _relay_loop(self) -> None:
        """The event outbox to the stream (``relay``): woken by the changes' NATS messages, and every
        ``events_relay_interval_s`` for the changes that sent none (or whose message was lost)."""
        settings = self.ctx.settings
        stream_ready = False
        while True:
            try:
                if not stream_ready:
                    await ensure_stream(self.ctx.nc, settings.events_retention_s)
                    stream_ready = True
                while True:
                    async with self.ctx.sessions() as session, session.begin():
                        relayed = await relay_pass(session, self.ctx.nc, settings.events_relay_batch)
                    if relayed < settings.events_relay_batch:
                        break
            except Exception as exc:
                log.warning("events.relay_failed", error=type(exc).__name__)
            await wait_event(self.relay_wake, settings.events_relay_interval_s)
            self.relay_wake.clear()
            await asyncio.sleep(0.01)  # let a burst of changes commit: one batch for them

    async def _retention_loop(self) -> None:
        """Old robot messages and screenshots out, every ``retention_interval_s`` (``retention``)."""
        while True:
            await asyncio.sleep(self.ctx.settings.retention_interval_s)
            try:
                await retention_pass(self.ctx)
            except Exception:
                log.exception("retention.failed")

    async def _rollup_loop(self) -> None:
        """Hourly job rollups for the statistics, every ``statistics_rollup_interval_s`` (``rollups``)."""
        while True:
            await asyncio.sleep(self.ctx.settings.statistics_rollup_interval_s)
            try:
                await rollup_pass(self.ctx)
            except Exception:
                log.exception("statistics.rollup_failed")

    async def _sweep_loop(self) -> None:
        interval = self.ctx.settings.sweep_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await sweep_all(self.ctx)
            except Exception:
                log.exception("sweep.failed")
            self.wake.set()
