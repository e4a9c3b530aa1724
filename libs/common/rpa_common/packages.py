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


async def read_package(session: AsyncSession, version_id: uuid.UUID) -> AsyncIterator[bytes]:
    """The bytes of a package version, chunk by chunk, in order (one query per chunk)."""
    seq = 0
    while True:
        data = (
            await session.execute(
                sa.select(ProcessPackageChunk.data).where(
                    ProcessPackageChunk.version_id == version_id, ProcessPackageChunk.seq == seq
                )
            )
        ).scalar_one_or_none()
        if data is None:
            return
        yield data
        seq += 1


async def stream_package(
    sessions: async_sessionmaker[AsyncSession], version_id: uuid.UUID
) -> AsyncIterator[bytes]:
    """``read_package`` in a session of its own: for a response body that outlives the request's."""
    async with sessions() as session:
        async for data in read_package(session, version_id):
            yield data
