"""Gauges sampled from the database: jobs by state, robots by status, task backlog per queue.

Every scheduler replica samples every ``metrics_sample_interval_s`` (the first time within a second
of its start, at a random moment, so replicas do not query in step) and exports the same totals: a dashboard takes
``max`` over replicas, never ``sum``. The queries stay cheap whatever the history holds:

- jobs: only the states a job waits or works in (Pending, Starting, Running, Stopping,
  Interrupting), counted through the ``(state, ...)`` index (``ix_job_dispatch``): the cost grows
  with the live jobs, not with the finished ones. Finished jobs are counted as they finish
  (``rpa_jobs_finished``), and over time ranges by the statistics API;
- robots: one ``GROUP BY`` over the robot table (one row per robot);
- tasks: the Created tasks of each queue, through ``(queue_id, state, ...)`` (``ix_task_take``): the
  cost grows with the backlog, not with the tasks done.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common import metrics
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Job, Queue, Robot, Task
from rpa_common.models.enums import ACTIVE_JOB_STATES, JobState, RobotStatus, TaskState
from rpa_common.service import ServiceContext

log = structlog.get_logger(__name__)

SAMPLED_JOB_STATES = (JobState.PENDING, *sorted(ACTIVE_JOB_STATES))
"""The job states ``rpa_jobs`` reports (always all of them, 0 when none)."""


@dataclass
class Sample:
    jobs: dict[JobState, int] = field(default_factory=dict)
    robots: dict[RobotStatus, int] = field(default_factory=dict)
    backlog: dict[uuid.UUID, int] = field(default_factory=dict)


async def read_sample(session: AsyncSession) -> Sample:
    out = Sample()
    jobs = await session.execute(
        sa.select(Job.state, sa.func.count()).where(Job.state.in_(SAMPLED_JOB_STATES)).group_by(Job.state)
    )
    out.jobs = {JobState(state): n for state, n in jobs.all()}
    robots = await session.execute(sa.select(Robot.status, sa.func.count()).group_by(Robot.status))
    out.robots = {RobotStatus(status): n for status, n in robots.all()}
    backlog = await session.execute(
        sa.select(Queue.id, sa.func.count(Task.id))
        .select_from(Queue)
        .outerjoin(Task, sa.and_(Task.queue_id == Queue.id, Task.state == TaskState.CREATED))
        .group_by(Queue.id)
    )
    out.backlog = {queue_id: n for queue_id, n in backlog.all()}
    return out


class GaugeSampler:
    """Sets ``rpa_jobs``, ``rpa_robots`` and ``rpa_task_backlog`` from the database."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._queues: set[str] = set()

    async def sample(self) -> Sample:
        sample = await run_in_transaction(
            self.ctx.read_sessions, read_sample, attempts=self.ctx.settings.db_retry_attempts
        )
        for state in SAMPLED_JOB_STATES:
            metrics.JOBS_BY_STATE.labels(state.value).set(sample.jobs.get(state, 0))
        for status in RobotStatus:
            metrics.ROBOTS_BY_STATUS.labels(status.value).set(sample.robots.get(status, 0))
        queues = {str(q): n for q, n in sample.backlog.items()}
        for queue, n in queues.items():
            metrics.TASK_BACKLOG.labels(queue).set(n)
        for gone in self._queues - queues.keys():  # deleted queues leave the gauge
            metrics.TASK_BACKLOG.remove(gone)
        self._queues = set(queues)
        return sample

    async def run(self) -> None:
        every = self.ctx.settings.metrics_sample_interval_s
        await asyncio.sleep(random.uniform(0, min(every, 1.0)))
        while True:
            try:
                await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: the gauges keep their last values
                log.warning("gauges.sample_failed", error=type(exc).__name__)
            await asyncio.sleep(every)
