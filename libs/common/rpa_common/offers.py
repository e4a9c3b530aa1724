"""Job offers: everything a robot needs to start (or resume) one job attempt.

Built by the dispatcher in the transaction that assigns the job (so the gateway can hand it to
the robot without a database round trip), and by the gateway when a robot (re)connects.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.models import Job, Process, ProcessVersion
from rpa_common.models.enums import ACTIVE_JOB_STATES
from rpa_common.nats.messages import JobOffer


def offer_query() -> sa.Select[Any]:
    """Active jobs with their process and version; narrow it with ``where``."""
    return (
        sa.select(
            Job.id,
            Job.attempt,
            Job.state,
            Job.input_args,
            Job.stop_after_s,
            Job.interrupt_after_s,
            Process.id.label("process_id"),
            Process.name.label("process_name"),
            ProcessVersion.id.label("version_id"),
            ProcessVersion.version,
            ProcessVersion.sha256,
            ProcessVersion.size,
            ProcessVersion.entry_point,
            ProcessVersion.default_input,
        )
        .join(Process, Process.id == Job.process_id)
        .join(ProcessVersion, ProcessVersion.id == Job.process_version_id)
        .where(Job.state.in_(ACTIVE_JOB_STATES))
    )


def to_offer(row: Any) -> JobOffer:
    """The offer of one ``offer_query`` row; the job's input overrides the manifest's defaults."""
    args = dict(row.default_input or {})
    args.update(row.input_args or {})
    return JobOffer(
        job_id=row.id,
        attempt=row.attempt,
        state=row.state,
        process_id=row.process_id,
        process_name=row.process_name,
        version_id=row.version_id,
        version=row.version,
        sha256=row.sha256,
        size=row.size,
        entry_point=row.entry_point,
        input_args=args,
        stop_after_s=row.stop_after_s,
        interrupt_after_s=row.interrupt_after_s,
    )


async def offers_for(session: AsyncSession, job_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, JobOffer]:
    """Offers of several jobs in one query."""
    ids = list(job_ids)
    if not ids:
        return {}
    rows = (await session.execute(offer_query().where(Job.id.in_(ids)))).all()
    return {row.id: to_offer(row) for row in rows}
