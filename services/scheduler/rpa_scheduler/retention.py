"""Retention: robot messages and screenshots older than their account's days are removed.

Each account says how many days it keeps robot messages (``message_retention_days``) and screenshots
(``screenshot_retention_days``), 30 by default. Every ``RPA_RETENTION_INTERVAL_S`` each scheduler
replica runs a pass: per account, rows older than the cut-off go in batches of
``RPA_RETENTION_BATCH`` (1,000), one short transaction each, so no lock is held long and the
database's undo log stays small. Rows are picked ``FOR UPDATE SKIP LOCKED``: two replicas running a
pass at once take different rows instead of waiting on each other.

A screenshot's image is in the blob store, outside the transaction. The batch that deletes
screenshot rows also writes their blob keys to ``blob_deletion``, in the same transaction. After the
commit, the blobs are deleted and then their ``blob_deletion`` rows (``drain_blob_deletions``). A
crash in between leaves the ``blob_deletion`` rows: the next pass, on any replica, deletes those
blobs again (deleting a missing blob is not an error). So an image never outlives its row for
longer than one pass after the store answers again, and no image is deleted while its row exists.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.blobs import BlobStore, shared_blob_store
from rpa_common.db.uow import run_in_transaction
from rpa_common.metrics import RETENTION_DELETED
from rpa_common.models import Account, BlobDeletion, RobotMessage, Screenshot
from rpa_common.models.base import utcnow
from rpa_common.service import ServiceContext

log = structlog.get_logger(__name__)


@dataclass
class RetentionResult:
    messages: int = 0
    screenshots: int = 0
    blobs: int = 0
    blob_failures: int = 0
    """Drains that failed (the blob store did not answer): their blobs wait for the next pass."""


async def _accounts(ctx: ServiceContext) -> list[tuple[uuid.UUID, int, int]]:
    async with ctx.sessions() as session:
        rows = await session.execute(
            sa.select(Account.id, Account.message_retention_days, Account.screenshot_retention_days)
        )
        return [(r[0], int(r[1]), int(r[2])) for r in rows]


async def delete_messages(ctx: ServiceContext, account_id: uuid.UUID, before: datetime, batch: int) -> int:
    """One batch of the account's robot messages older than ``before``; how many went."""

    async def work(session: AsyncSession) -> int:
        ids = list(
            (
                await session.execute(
                    sa.select(RobotMessage.id)
                    .where(RobotMessage.account_id == account_id, RobotMessage.at < before)
                    .limit(batch)
                    .with_for_update(skip_locked=True)
                )
            ).scalars()
        )
        if ids:
            await session.execute(sa.delete(RobotMessage).where(RobotMessage.id.in_(ids)))
        return len(ids)

    return await run_in_transaction(ctx.sessions, work, attempts=ctx.settings.db_retry_attempts)


async def delete_screenshots(ctx: ServiceContext, account_id: uuid.UUID, before: datetime, batch: int) -> int:
    """One batch of the account's screenshot rows older than ``before``; their blobs are queued in
    ``blob_deletion`` by the same transaction. How many rows went."""

    async def work(session: AsyncSession) -> int:
        rows = (
            await session.execute(
                sa.select(Screenshot.id, Screenshot.blob_key)
                .where(Screenshot.account_id == account_id, Screenshot.at < before)
                .limit(batch)
                .with_for_update(skip_locked=True)
            )
        ).all()
        if not rows:
            return 0
        await session.execute(sa.delete(Screenshot).where(Screenshot.id.in_([r.id for r in rows])))
        now = utcnow()
        await session.execute(sa.insert(BlobDeletion), [{"blob_key": r.blob_key, "at": now} for r in rows])
        return len(rows)

    return await run_in_transaction(ctx.sessions, work, attempts=ctx.settings.db_retry_attempts)


async def drain_blob_deletions(ctx: ServiceContext, store: BlobStore, batch: int) -> int:
    """Delete the blobs queued in ``blob_deletion`` (a batch at a time), then their rows; how many.

    The rows are locked while their blobs are deleted: another replica skips them. Should the store
    fail, the transaction rolls back and the rows wait for the next pass."""
    total = 0
    while True:

        async def work(session: AsyncSession) -> int:
            keys = list(
                (
                    await session.execute(
                        sa.select(BlobDeletion.blob_key).limit(batch).with_for_update(skip_locked=True)
                    )
                ).scalars()
            )
            if keys:
                await store.delete(keys)
                await session.execute(sa.delete(BlobDeletion).where(BlobDeletion.blob_key.in_(keys)))
            return len(keys)

        done = await run_in_transaction(ctx.sessions, work, attempts=ctx.settings.db_retry_attempts)
        total += done
        if done < batch:
            return total
        await asyncio.sleep(0)


async def retention_pass(
    ctx: ServiceContext, *, now: datetime | None = None, store: BlobStore | None = None
) -> RetentionResult:
    """Remove what every account keeps no longer (see the module's docstring)."""
    moment = now or utcnow()
    batch = ctx.settings.retention_batch
    store = store or shared_blob_store(ctx.settings)
    result = RetentionResult()

    async def drain() -> None:
        # A blob store that does not answer must not hold up the robot messages' retention: the
        # queued blobs simply wait in ``blob_deletion`` for a later pass.
        try:
            result.blobs += await drain_blob_deletions(ctx, store, batch)
        except Exception as exc:
            result.blob_failures += 1
            log.warning("retention.blob_store_failed", error=type(exc).__name__, detail=str(exc)[:200])

    await drain()  # blobs a crashed or failed pass left: they are already out of the database
    for account_id, message_days, screenshot_days in await _accounts(ctx):
        before = moment - timedelta(days=message_days)
        while (n := await delete_messages(ctx, account_id, before, batch)) > 0:
            result.messages += n
            RETENTION_DELETED.labels(kind="log").inc(n)
            if n < batch:
                break
            await asyncio.sleep(0)  # let the replica's other work in between batches
        before = moment - timedelta(days=screenshot_days)
        while (n := await delete_screenshots(ctx, account_id, before, batch)) > 0:
            result.screenshots += n
            RETENTION_DELETED.labels(kind="screenshot").inc(n)
            await drain()
            if n < batch:
                break
            await asyncio.sleep(0)
    if result.messages or result.screenshots or result.blobs:
        log.info(
            "retention.removed",
            messages=result.messages,
            screenshots=result.screenshots,
            blobs=result.blobs,
            blob_failures=result.blob_failures,
        )
    return result
