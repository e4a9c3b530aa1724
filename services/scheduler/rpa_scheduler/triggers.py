"""Schedule triggers: a cron in the trigger's time zone creates one job per occurrence.

Every scheduler replica holds the same APScheduler jobs, so every replica fires every occurrence;
``fire_trigger`` makes that safe: it inserts a ``trigger_fire`` row keyed by (trigger, the
occurrence's scheduled time in UTC) in the same transaction as the job, and a duplicate key means
another replica (or an earlier run of the same transaction) already created the job.

Triggers are (re)loaded at start, on ``TRIGGER_CHANGED`` and periodically, so a lost message only
delays a change.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.db.uow import run_in_transaction
from rpa_common.jobflow import Actor, create_job, created_message
from rpa_common.models import Job, Process, Trigger, TriggerFire
from rpa_common.models.base import utcnow
from rpa_common.models.enums import ActorType, JobSource, TriggerKind
from rpa_common.nats import subjects
from rpa_common.service import ServiceContext
from rpa_common.triggerflow import cron_trigger

log = structlog.get_logger(__name__)

MISFIRE_GRACE_S = 300
"""An occurrence may still fire this late (event loop stalled, replica restarting)."""


def fire_key(fire_time: datetime) -> str:
    """The occurrence's identity: its scheduled time in UTC, ISO 8601."""
    return fire_time.astimezone(UTC).isoformat()


def occurrence_at_or_before(
    trigger: CronTrigger, now: datetime, window_s: float = MISFIRE_GRACE_S
) -> datetime | None:
    """The latest scheduled time of ``trigger`` in ``(now - window_s, now]``.

    APScheduler 3 does not pass the scheduled time to the job function; it runs the job at (or a
    little after) that time, so the latest occurrence not after now is the one being fired.
    """
    last: datetime | None = None
    t = trigger.get_next_fire_time(None, now - timedelta(seconds=window_s))
    while t is not None and t <= now:
        last = t
        t = trigger.get_next_fire_time(t, t + timedelta(microseconds=1))
    return last


async def fire_trigger(ctx: ServiceContext, trigger_id: uuid.UUID, fire_time: datetime) -> uuid.UUID | None:
    """Create the job of one occurrence; None when another replica already did (or nothing to do)."""
    key = fire_key(fire_time)
    job_id = uuid.uuid4()  # made outside the transaction: a re-run inserts the same ids

    async def work(session: AsyncSession) -> Job | None:
        trig = await session.get(Trigger, trigger_id)
        if trig is None or not trig.enabled:
            return None
        version_id = await session.scalar(
            sa.select(Process.current_version_id).where(Process.id == trig.process_id)
        )
        now = utcnow()
        trig.last_fired_at = now
        if version_id is None or (trig.robot_id is None and trig.robot_group_id is None):
            # Recorded anyway, so the occurrence is decided once for all replicas.
            session.add(TriggerFire(trigger_id=trig.id, fire_key=key, job_id=None, fired_at=now))
            await session.flush()
            log.warning(
                "trigger.fire_skipped",
                trigger_id=str(trig.id),
                reason="no current version" if version_id is None else "no robot or group",
            )
            return None
        job = await create_job(
            session,
            job_id=job_id,
            account_id=trig.account_id,
            process_id=trig.process_id,
            process_version_id=version_id,
            robot_id=trig.robot_id,
            robot_group_id=None if trig.robot_id is not None else trig.robot_group_id,
            trigger_id=trig.id,
            priority=trig.priority,
            source=JobSource.TRIGGER,
            input_args=trig.input_args,
            actor=Actor(ActorType.TRIGGER, trig.id),
            reason=f"schedule {key}",
        )
        session.add(TriggerFire(trigger_id=trig.id, fire_key=key, job_id=job.id, fired_at=now))
        await session.flush()
        return job

    try:
        job = await run_in_transaction(ctx.sessions, work, attempts=ctx.settings.db_retry_attempts)
    except IntegrityError:
        log.debug("trigger.fire_duplicate", trigger_id=str(trigger_id), fire_key=key)
        return None
    if job is None:
        return None
    log.info("trigger.fired", trigger_id=str(trigger_id), fire_key=key, job_id=str(job.id))
    await ctx.publish(subjects.JOB_CREATED, created_message(job).encode())
    return job.id


@dataclass(frozen=True)
class _Loaded:
    cron: str
    time_zone: str


class TriggerScheduler:
    """The APScheduler of one replica, kept equal to the enabled schedule triggers in the database."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.loaded: dict[uuid.UUID, _Loaded] = {}

    def start(self) -> None:
        self.scheduler.start()

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    async def reload(self) -> None:
        """Add, replace and remove APScheduler jobs to match the database."""
        async with self.ctx.sessions() as session:
            rows = (
                await session.execute(
                    sa.select(Trigger.id, Trigger.cron, Trigger.time_zone).where(
                        Trigger.kind == TriggerKind.SCHEDULE,
                        Trigger.enabled.is_(True),
                        Trigger.cron.is_not(None),
                    )
                )
            ).all()
        wanted = {row.id: _Loaded(str(row.cron), row.time_zone or "UTC") for row in rows}
        for trigger_id in list(self.loaded):
            if trigger_id not in wanted:
                self._remove(trigger_id)
        for trigger_id, spec in wanted.items():
            if self.loaded.get(trigger_id) == spec:
                continue
            try:
                cron = cron_trigger(spec.cron, spec.time_zone)
            except ValueError as exc:
                log.warning("trigger.invalid", trigger_id=str(trigger_id), error=str(exc))
                self._remove(trigger_id)
                continue
            self.scheduler.add_job(
                self._on_fire,
                cron,
                args=[trigger_id, cron],
                id=str(trigger_id),
                replace_existing=True,
                misfire_grace_time=MISFIRE_GRACE_S,
                coalesce=True,
                max_instances=10,
            )
            self.loaded[trigger_id] = spec
        log.debug("triggers.loaded", count=len(self.loaded))

    def _remove(self, trigger_id: uuid.UUID) -> None:
        self.loaded.pop(trigger_id, None)
        if self.scheduler.get_job(str(trigger_id)) is not None:
            self.scheduler.remove_job(str(trigger_id))

    async def _on_fire(self, trigger_id: uuid.UUID, cron: CronTrigger) -> None:
        occurrence = occurrence_at_or_before(cron, datetime.now(UTC))
        if occurrence is None:
            return
        try:
            await fire_trigger(self.ctx, trigger_id, occurrence)
        except Exception:
            log.exception("trigger.fire_failed", trigger_id=str(trigger_id))
