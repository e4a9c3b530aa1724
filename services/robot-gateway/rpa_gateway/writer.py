"""Group commit: reliable robot frames from every connection of this process, applied in batches.

A connection hands its frame to ``FrameWriter.apply`` and waits; it has at most one frame in flight,
so its frames stay in order. The writer takes what is waiting (up to ``gateway_batch_max``; when the
batch is not full it waits ``gateway_batch_delay_ms`` for more), applies each frame under its own
``inbound_seq`` guard in ONE transaction, commits, and only then wakes the connections, which
acknowledge. Row locks are taken as every writer of the project takes them: the batch's jobs
first, in id order, then robots in id order.

Task and resource frames (``rpa_gateway.tasks``) share the batch: reliable ones (``task.add``,
``task.progress``, ``task.finish``, ``resource.set``) under the same ``inbound_seq`` guard, requests
(``task.take``, ``task.renew``, ``resource.get``, ``credential.get``) without it, since they are
never replayed. Each is answered by a reply frame built in the transaction and sent after the
commit.

A batch that fails on a transient error (deadlock, lost connection) is re-run whole, by
``run_in_transaction``. A batch that fails for any other reason holds a frame that is bad in
itself, or a task/resource frame the libs refused (a stale token, an unknown queue: what the
robot caused, ``tasks.DomainError``): it is re-run with each frame under a savepoint, so that frame
alone is refused (an ``error`` frame, or its reply's ``error``) and the others are applied.
Running without savepoints first keeps the common case at one round trip per statement; a
refusal costs one re-run of its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.db.uow import is_retryable, run_in_transaction
from rpa_common.jobflow import Transition
from rpa_common.models.enums import RobotStatus
from rpa_common.nats.messages import JobCreated
from rpa_common.service import ServiceContext
from rpa_gateway import store, tasks
from rpa_protocol import (
    CredentialGet,
    JobRequest,
    JobStatus,
    LogBatch,
    ResourceGet,
    ResourceSet,
    TaskAdd,
    TaskFinish,
    TaskProgress,
    TaskRenew,
    TaskTake,
)

log = structlog.get_logger(__name__)

Reliable = JobStatus | LogBatch | JobRequest | TaskAdd | TaskProgress | TaskFinish | ResourceSet
Request = TaskTake | TaskRenew | ResourceGet | CredentialGet
Batched = Reliable | Request
_TASK_FRAMES = (TaskAdd, TaskTake, TaskRenew, TaskProgress, TaskFinish)
_RESOURCE_FRAMES = (ResourceGet, ResourceSet, CredentialGet)
_REQUESTS = (TaskTake, TaskRenew, ResourceGet, CredentialGet)


class _Refused(Exception):
    """A task/resource frame was refused in a batch run without savepoints: re-run isolated."""


@dataclass(frozen=True)
class Source:
    """What the writer needs to know about the connection a frame came on."""

    robot: store.RobotIdentity
    connection_id: uuid.UUID
    control: bool
    single_job: bool


@dataclass
class Applied:
    """The outcome of one frame, handed back to its connection after the commit."""

    transitions: list[Transition] = field(default_factory=list)
    status: RobotStatus | None = None
    job_id: uuid.UUID | None = None  # job.request: the job made (or made before)
    request_error: str | None = None  # job.request: why no job was made
    created: JobCreated | None = None
    rejected: str | None = None  # the frame itself could not be applied: an ``error`` frame, no ack
    reply: tasks.Reply | None = None  # task/resource frames: sent after the commit (and the ack)
    watch: tasks.Watched | None = None  # resource.get with watch: remembered on the connection


@dataclass
class _Pending:
    source: Source
    frame: Batched
    future: asyncio.Future[Applied]


class WriterUnavailable(Exception):
    """The batch could not be stored (database down): the frame is not acknowledged."""


class FrameWriter:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.frames = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="gateway-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(WriterUnavailable("gateway stopping"))

    async def apply(self, source: Source, frame: Batched) -> Applied:
        """Apply one frame (with whatever else is waiting); returns after the commit.

        Raises ``WriterUnavailable`` when the frame could not be stored."""
        future: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(source, frame, future))
        return await future

    async def _loop(self) -> None:
        settings = self.ctx.settings
        limit = settings.gateway_batch_max
        delay = settings.gateway_batch_delay_ms / 1000
        while True:
            batch = [await self._queue.get()]
            while len(batch) < limit and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            if len(batch) < limit and delay > 0:
                # One short sleep, then whatever came meanwhile: cheaper than waiting per frame.
                await asyncio.sleep(delay)
                while len(batch) < limit and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
            await self._run(batch)

    async def _run(self, batch: list[_Pending]) -> None:
        attempts = self.ctx.settings.db_retry_attempts
        try:
            try:
                results = await run_in_transaction(
                    self.ctx.sessions, lambda s: self._work(s, batch, isolate=False), attempts=attempts
                )
            except Exception as exc:
                if is_retryable(exc):
                    raise
                if isinstance(exc, _Refused):
                    log.info("frames.batch_isolating", frames=len(batch), reason="refused frame")
                else:
                    log.warning("frames.batch_isolating", frames=len(batch), error=type(exc).__name__)
                results = await run_in_transaction(
                    self.ctx.sessions, lambda s: self._work(s, batch, isolate=True), attempts=attempts
                )
        except Exception as exc:
            log.exception("frames.batch_failed", frames=len(batch))
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(WriterUnavailable(type(exc).__name__))
            return
        self.batches += 1
        self.frames += len(batch)
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)

    async def _work(self, session: AsyncSession, batch: list[_Pending], *, isolate: bool) -> list[Applied]:
        # Each job row is read once, under the lock; a second frame about the same job (rare: a
        # replaced connection's last frame) reads it again, after the first one changed it.
        locked = await store.lock_jobs(
            session, list({p.frame.job_id for p in batch if isinstance(p.frame, JobStatus)})
        )
        cache = tasks.BatchCache()
        results: list[Applied | None] = [None] * len(batch)
        # Robots in id order (a stable sort: two frames of one robot keep their order).
        for i in sorted(range(len(batch)), key=lambda n: batch[n].source.robot.id):
            pending = batch[i]
            if not isolate:
                results[i] = await self._apply_one(
                    session, pending.source, pending.frame, locked, cache, isolate
                )
                continue
            try:
                async with session.begin_nested():
                    results[i] = await self._apply_one(
                        session, pending.source, pending.frame, locked, cache, isolate
                    )
            except Exception as exc:
                if is_retryable(exc):
                    raise
                log.exception(
                    "frame.rejected",
                    robot_id=str(pending.source.robot.id),
                    seq=pending.frame.seq,
                    type=pending.frame.type,
                )
                results[i] = Applied(rejected=f"the gateway could not apply this frame: {type(exc).__name__}")
                # A queue read under the savepoint just rolled back may not be there any more.
                cache = tasks.BatchCache()
        return [r if r is not None else Applied() for r in results]

    async def _apply_one(
        self,
        session: AsyncSession,
        source: Source,
        frame: Batched,
        locked: dict[uuid.UUID, Any],
        cache: tasks.BatchCache,
        isolate: bool,
    ) -> Applied:
        """One frame, once: ``seq`` above ``inbound_seq``, else a replay that changes nothing.

        Control connections have no sequence of their own: their requests are deduplicated by
        ``request_id`` alone. Requests (``task.take``...) are never replayed: no guard."""
        robot = source.robot
        if isinstance(frame, _TASK_FRAMES + _RESOURCE_FRAMES):
            fresh = (
                True if isinstance(frame, _REQUESTS) else await store.claim_seq(session, robot.id, frame.seq)
            )
            if not fresh:
                return Applied(reply=tasks.duplicate(frame))
            return await self._apply_shared(session, robot, frame, cache, isolate)
        job: Any = None
        if isinstance(frame, JobStatus):
            job = (
                locked.pop(frame.job_id)
                if frame.job_id in locked
                else await store.lock_job(session, frame.job_id)
            )
        fresh = True if source.control else await store.claim_seq(session, robot.id, frame.seq)
        out = Applied()
        if isinstance(frame, JobRequest):
            if fresh:
                out.job_id, out.request_error, out.created = await store.create_requested_job(
                    session, robot, frame
                )
            else:
                out.job_id = await store.existing_request(session, robot, frame)
                out.request_error = None if out.job_id else "request already handled"
        elif not fresh:
            pass
        elif isinstance(frame, LogBatch):
            await store.insert_logs(session, robot, frame.entries)
        else:
            out.transitions = await store.apply_job_status(
                session, robot, frame, self.ctx.settings.job_lease_s, job
            )
            ended = any(t.to_state.is_final for t in out.transitions)
            if ended and source.single_job:
                if await store.detach(session, robot.id, source.connection_id):
                    out.status = RobotStatus.DISCONNECTED
            elif ended:
                # Only an end changes Working/Ready: the dispatcher set Working when it assigned
                # the job, and Starting -> Running leaves it so.
                out.status = await store.refresh_status(session, robot.id, source.connection_id)
        return out

    async def _apply_shared(
        self,
        session: AsyncSession,
        robot: store.RobotIdentity,
        frame: tasks.SharedFrame,
        cache: tasks.BatchCache,
        isolate: bool,
    ) -> Applied:
        """A task or resource frame (its seq already claimed). A refusal by the libs may have
        flushed part of the frame's work: without a savepoint of its own the whole batch is re-run
        isolated (``_Refused``); with one, only this frame's work is undone and the seq stays
        claimed, so the refusal is answered (and acknowledged) once, like any applied frame."""
        try:
            if not isolate:
                return await self._shared(session, robot, frame, cache)
            async with session.begin_nested():
                return await self._shared(session, robot, frame, cache)
        except tasks.DomainError as exc:
            if not isolate:
                raise _Refused(frame.type) from exc
            error = tasks.reply_error(exc, frame)
            watch = None
            if isinstance(frame, ResourceGet) and frame.watch:
                # Watching a name that does not resolve (yet) is allowed: it may be given later.
                watch = tasks.Watched(frame.name, None, tasks.fingerprint(None, error))
            return Applied(reply=tasks.refused(frame, error), watch=watch)

    async def _shared(
        self,
        session: AsyncSession,
        robot: store.RobotIdentity,
        frame: tasks.SharedFrame,
        cache: tasks.BatchCache,
    ) -> Applied:
        if isinstance(frame, _TASK_FRAMES):
            return Applied(reply=await tasks.apply_task_frame(session, robot, frame, cache))
        reply, watch = await tasks.apply_resource_frame(session, self.ctx.settings, robot, frame)
        return Applied(reply=reply, watch=watch)
