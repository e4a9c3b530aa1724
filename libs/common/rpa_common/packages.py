"""Process package bytes in the database: written and read in 1 MiB chunks.

The API stores a published package with ``store_package``; the API (downloads) and the robot gateway
(serving robots) read it back with ``read_package``. Neither ever holds a whole package in memory:
one chunk is one row (``process_package_chunk``), well under MariaDB's ``max_allowed_packet``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import BinaryIO

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rpa_common.db.uow import run_in_transaction
from rpa_common.models import ProcessPackageChunk

CHUNK_SIZE = 1024 * 1024


async def store_package(session: AsyncSession, version_id: uuid.UUID, fileobj: BinaryIO) -> int:
    """Write ``fileobj`` (from its start) as the chunks of ``version_id``; returns the chunk count.

    Flushes only; the caller's unit of work commits. File reads run in a thread (the file may be on
    disk), and each chunk is inserted on its own so memory stays at one chunk.
    """
    await asyncio.to_thread(fileobj.seek, 0)
    seq = 0
    while True:
        data = await asyncio.to_thread(fileobj.read, CHUNK_SIZE)
        if not data:
            return seq
        await session.execute(
            sa.insert(ProcessPackageChunk).values(version_id=version_id, seq=seq, data=data)
        )
        seq += 1


async def _chunk(session: AsyncSession, version_id: uuid.UUID, seq: int) -> bytes | None:
    data: bytes | None = (
        await session.execute(
            sa.select(ProcessPackageChunk.data).where(
                ProcessPackageChunk.version_id == version_id, ProcessPackageChunk.seq == seq
            )
        )
    ).scalar_one_or_none()
    return data


async def read_package(session: AsyncSession, version_id: uuid.UUID) -> AsyncIterator[bytes]:
    """The bytes of a package version, chunk by chunk, in order (one query per chunk)."""
    seq = 0
    while True:
        data = await _chunk(session, version_id, seq)
        if data is None:
            return
        yield data
        seq += 1


async def stream_package(
    sessions: async_sessionmaker[AsyncSession], version_id: uuid.UUID, *, attempts: int = 5
) -> AsyncIterator[bytes]:
    """``read_package`` for a response body that outlives the request's unit of work.

    Each chunk is read in a retried unit of work of its own: a version's chunks never change, so a
    fail-over in the middle of a download costs a re-read of one chunk, not the download.
    """
    seq = 0

    async def next_chunk(session: AsyncSession) -> bytes | None:
        return await _chunk(session, version_id, seq)

    while True:
        data = await run_in_transaction(sessions, next_chunk, attempts=attempts)
        if data is None:
            return
        yield data
        seq += 1
