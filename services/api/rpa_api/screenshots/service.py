"""Screenshots as a user sees them: through their job.

A screenshot has no folder of its own: it is seen through its job (so through the job's process),
with the permission to read jobs. Another account's screenshot, or one of a job the caller cannot
see, is a 404 exactly like an unknown id.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal
from rpa_api.jobs import service as jobs
from rpa_common.errors import NotFound
from rpa_common.models import Screenshot


def of_job(principal: Principal, job_id: uuid.UUID) -> sa.Select[Any]:
    return sa.select(Screenshot).where(
        Screenshot.account_id == principal.account_id, Screenshot.job_id == job_id
    )


async def get_screenshot(session: AsyncSession, principal: Principal, screenshot_id: uuid.UUID) -> Screenshot:
    shot = (
        await session.execute(
            sa.select(Screenshot).where(
                Screenshot.id == screenshot_id, Screenshot.account_id == principal.account_id
            )
        )
    ).scalar_one_or_none()
    if shot is None or shot.job_id is None:
        raise NotFound.of("screenshot", screenshot_id)
    try:
        await jobs.get_job(session, principal, shot.job_id)  # the job's folder decides
    except NotFound:
        raise NotFound.of("screenshot", screenshot_id) from None
    return shot
