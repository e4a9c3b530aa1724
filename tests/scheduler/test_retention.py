"""Retention: per account, robot messages and screenshots older than its days are removed in small
batches, screenshots' images with them (after the commit, through ``blob_deletion``); newer rows,
and other accounts' rows within their own days, stay. A crash between the rows' commit and the
blobs' deletion leaves the blobs queued: the next pass deletes them."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.blobs import DirectoryBlobStore
from rpa_common.db.uow import run_in_transaction
from rpa_common.metrics import REGISTRY
from rpa_common.models import Account, BlobDeletion, RobotMessage, Screenshot
from rpa_common.models.base import utcnow
from rpa_common.models.enums import LogLevel
from rpa_common.service import ServiceContext
from rpa_scheduler.retention import retention_pass
from tests.images import make_png


class FlakyStore(DirectoryBlobStore):
    """A directory store whose deletes fail while ``down``: the process dies before the blobs go."""

    down = True

    async def delete(self, keys: list[str]) -> None:
        if self.down:
            raise OSError("blob store unreachable")
        await super().delete(keys)


def _deleted(kind: str) -> float:
    return REGISTRY.get_sample_value("rpa_retention_deleted_total", {"kind": kind}) or 0.0


async def _account(ctx: ServiceContext, **days: int) -> uuid.UUID:
    account_id = uuid.uuid4()

    async def work(session: AsyncSession) -> None:
        session.add(Account(id=account_id, name=f"ret-{account_id.hex[:12]}", **days))

    await run_in_transaction(ctx.sessions, work)
    return account_id


async def _fill(
    ctx: ServiceContext,
    store: DirectoryBlobStore,
    account_id: uuid.UUID,
    message_ages: list[float],
    shot_ages: list[float],
) -> tuple[dict[uuid.UUID, float], dict[uuid.UUID, tuple[float, str]]]:
    """Messages and screenshots (with their blobs) of these ages in days."""
    now = utcnow()
    messages = {uuid.uuid4(): age for age in message_ages}
    shots = {uuid.uuid4(): (age, "") for age in shot_ages}
    for shot_id, (age, _) in list(shots.items()):
        key = f"screenshots/{account_id}/{shot_id}.png"
        await store.put(key, make_png(), "image/png")
        shots[shot_id] = (age, key)

    async def work(session: AsyncSession) -> None:
        for mid, age in messages.items():
            at = now - timedelta(days=age)
            session.add(
                RobotMessage(id=mid, account_id=account_id, level=LogLevel.INFO, message=f"{age} days", at=at)
            )
        for sid, (age, key) in shots.items():
            at = now - timedelta(days=age)
            session.add(
                Screenshot(id=sid, account_id=account_id, size=10, blob_key=key, at=at, job_id=uuid.uuid4())
            )

    await run_in_transaction(ctx.sessions, work)
    return messages, shots


async def _left(ctx: ServiceContext, account_id: uuid.UUID) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
    async with ctx.sessions() as session:
        messages = set(
            (
                await session.execute(sa.select(RobotMessage.id).where(RobotMessage.account_id == account_id))
            ).scalars()
        )
        shots = set(
            (
                await session.execute(sa.select(Screenshot.id).where(Screenshot.account_id == account_id))
            ).scalars()
        )
    return messages, shots


async def _queued(ctx: ServiceContext, keys: list[str]) -> set[str]:
    async with ctx.sessions() as session:
        rows = await session.execute(sa.select(BlobDeletion.blob_key).where(BlobDeletion.blob_key.in_(keys)))
        return set(rows.scalars())


async def test_retention_removes_old_rows_and_their_screenshots_and_keeps_newer(
    ctx: ServiceContext, tmp_path: Path
) -> None:
    small = dataclasses.replace(ctx, settings=ctx.settings.model_copy(update={"retention_batch": 2}))
    store = DirectoryBlobStore(tmp_path / "blobs")
    mine = await _account(ctx, message_retention_days=10, screenshot_retention_days=5)
    other = await _account(ctx)  # 30 days of each, the default
    messages, shots = await _fill(ctx, store, mine, [40, 11, 10.5, 12, 13, 9, 1], [6, 7, 30, 5.5, 4, 0.1])
    other_messages, other_shots = await _fill(ctx, store, other, [11, 29], [6, 29])
    logs_before, shots_before = _deleted("log"), _deleted("screenshot")

    result = await retention_pass(small, store=store)

    kept_messages = {m for m, age in messages.items() if age < 10}
    kept_shots = {s for s, (age, _) in shots.items() if age < 5}
    assert await _left(ctx, mine) == (kept_messages, kept_shots)
    assert await _left(ctx, other) == (set(other_messages), set(other_shots))  # within its 30 days
    for sid, (_, key) in shots.items():
        assert (await store.get(key) is not None) == (sid in kept_shots), key
    for _, key in other_shots.values():
        assert await store.get(key) is not None
    assert await _queued(ctx, [key for _, key in shots.values()]) == set()
    # Counted (at least ours: another test's account may have had old rows too).
    assert result.messages >= 5 and result.screenshots >= 4 and result.blobs >= 4
    assert _deleted("log") - logs_before >= 5 and _deleted("screenshot") - shots_before >= 4

    # A second pass finds nothing more of ours.
    await retention_pass(small, store=store)
    assert await _left(ctx, mine) == (kept_messages, kept_shots)


async def test_blobs_of_removed_rows_survive_a_crash_and_go_on_the_next_pass(
    ctx: ServiceContext, tmp_path: Path
) -> None:
    flaky = FlakyStore(tmp_path / "blobs")
    mine = await _account(ctx, screenshot_retention_days=1)
    _, shots = await _fill(ctx, flaky, mine, [], [2, 3, 0.5])
    old_keys = [key for age, key in shots.values() if age > 1]

    # The rows' commit happens, then the blobs cannot be deleted (as if the process died there).
    failed = await retention_pass(ctx, store=flaky)
    assert failed.blob_failures >= 1
    _, left = await _left(ctx, mine)
    assert left == {sid for sid, (age, _) in shots.items() if age < 1}  # the rows are gone...
    assert all([await flaky.get(k) is not None for k in old_keys])  # ...their blobs not yet...
    assert await _queued(ctx, old_keys) == set(old_keys)  # ...and they are queued

    flaky.down = False
    await retention_pass(ctx, store=flaky)
    assert all([await flaky.get(k) is None for k in old_keys])
    assert await _queued(ctx, old_keys) == set()
    [(_, young_key)] = [v for v in shots.values() if v[0] < 1]
    assert await flaky.get(young_key) is not None
