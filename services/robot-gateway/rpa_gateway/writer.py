"""Group commit: reliable robot frames from every connection of this process, applied in batches.

A connection hands its frame to ``FrameWriter.apply`` and waits; it has at most one frame in flight,
so its frames stay in order. Each of ``gateway_writers`` loops takes what is waiting (up to
``gateway_batch_max``; when the batch is not full it waits ``gateway_batch_delay_ms`` for more), applies each frame under its own
``inbound_seq`` guard in ONE transaction, commits, and only then wakes the connections, which
acknowledge. Row locks are taken as every writer of the project takes them: the batch's jobs
first, in id order, then robots in id order.

Task and resource frames (``rpa_gateway.tasks``) share the batch: reliable ones (``task.add``,
``task.progress``, ``task.finish``, ``resource.set``) under the same ``inbound_seq`` guard, requests
(``task.take``, ``task.renew``, ``resource.get``, ``credential.get``) without it, since they are
never replayed. Each is answered by a reply frame built in the transaction and sent after the
commit.

What the robot caused (a stale token, an unknown queue: ``tasks.DomainError``) is answered in the
frame's reply and changes nothing; the libs refuse before they write, so the batch goes on.

A batch that fails on a transient error (deadlock, lost connection) is re-run whole, by
``run_in_transaction``. A batch that fails for any other reason holds a frame that is bad in
itself: it is re-run with each frame under a savepoint, so that frame alone is refused (with an
``error`` frame) and the others are applied. Running without savepoints first keeps the common
case at one round trip per statement.

Log batches (``log``) have queues and loops of their own, so that a flood of log lines never delays
a job's status or a task: their batches are cut at ``gateway_log_batch_lines`` lines, and the lines
of all their fresh frames are stored at once (``store.store_logs``: COPY on PostgreSQL). Lines
received and not yet committed are bounded by ``gateway_log_pending_max``: a connection whose log
frame finds no room waits before reading its next frame, so TCP pushes back on the robot, which
keeps buffering in its journal (docs/robot-protocol.md, "Backpressure").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.db.uow import is_retryable, run_in_transaction
from rpa_common.jobflow import Transition
from rpa_common.metrics import LOG_BACKLOG, LOG_COMMIT_LATENCY, LOG_LINES_INGESTED
from rpa_common.models.enums import RobotStatus
from rpa_common.nats.messages import JobCreated
from rpa_common.service import ServiceContext
from rpa_gateway import hotpath, store, tasks
from rpa_protocol import (
    CredentialGet,
    JobRequest,
    JobStatus,
    LogBatch,
    LogEntry,
    ResourceGet,
    ResourceSet,
    TaskAdd,
    TaskFinish,
    TaskFinished,
    TaskProgress,
    TaskRenew,
    TaskTake,
)

log = structlog.get_logger(__name__)

Reliable = JobStatus | LogBatch | JobRequest | TaskAdd | TaskProgress | TaskFinish | ResourceSet
_LEVEL_OF = attrgetter("level")
Request = TaskTake | TaskRenew | ResourceGet | CredentialGet
Batched = Reliable | Request
_TASK_FRAMES = (TaskAdd, TaskTake, TaskRenew, TaskProgress, TaskFinish)
_RESOURCE_FRAMES = (ResourceGet, ResourceSet, CredentialGet)
_REQUESTS = (TaskTake, TaskRenew, ResourceGet, CredentialGet)


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
    logged: Counter[str] | None = None  # log: lines stored, by level (counted after the commit)


@dataclass
class _Pending:
    source: Source
    frame: Batched
    future: asyncio.Future[Applied]


class WriterUnavailable(Exception):
    """The batch could not be stored (database down): the frame is not acknowledged."""


class LineBudget:
    """At most ``limit`` log lines received and not yet committed; FIFO, so no frame starves.

    A frame larger than the whole budget waits until nothing else is pending, then goes alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def acquire(self, n: int) -> int:
        n = min(n, self.limit)
        if not self._waiters and self.used + n <= self.limit:
            self.used += n
            LOG_BACKLOG.set(self.used)
            return n
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((n, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(n)  # granted just as we were cancelled: give it back
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove((n, future))
                self._wake()
            raise
        return n

    def release(self, n: int) -> None:
        self.used -= n
        self._wake()
        LOG_BACKLOG.set(self.used)

    def _wake(self) -> None:
        while self._waiters:
            n, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if self.used + n > self.limit:
                return
            self._waiters.popleft()
            self.used += n
            future.set_result(None)


class FrameWriter:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._logs: asyncio.Queue[_Pending] = asyncio.Queue()
        self.log_room = LineBudget(ctx.settings.gateway_log_pending_max)
        self._tasks: list[asyncio.Task[None]] = []
        self.batches = 0
        self.frames = 0
        self.queue_names = tasks.QueueNames()

    def start(self) -> None:
        # Several batches in flight: while one waits for the database, the next one gathers and
        # runs. A connection still has one frame in flight, so its frames stay in order; two
        # batches never hold frames of the same connection.
        settings = self.ctx.settings
        self._tasks = [
            asyncio.create_task(self._loop(self._queue, None), name=f"gateway-writer-{n}")
            for n in range(settings.gateway_writers)
        ] + [
            asyncio.create_task(
                self._loop(self._logs, settings.gateway_log_batch_lines), name=f"gateway-log-writer-{n}"
            )
            for n in range(settings.gateway_writers)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for queue in (self._queue, self._logs):
            while not queue.empty():
                pending = queue.get_nowait()
                if not pending.future.done():
                    pending.future.set_exception(WriterUnavailable("gateway stopping"))

    async def apply(self, source: Source, frame: Batched) -> Applied:
        """Apply one frame (with whatever else is waiting); returns after the commit.

        Raises ``WriterUnavailable`` when the frame could not be stored. A log frame first waits
        for room in ``log_room`` (backpressure: its connection reads nothing meanwhile)."""
        future: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
        if not isinstance(frame, LogBatch):
            self._queue.put_nowait(_Pending(source, frame, future))
            return await future
        taken = await self.log_room.acquire(len(frame.entries))
        try:
            self._logs.put_nowait(_Pending(source, frame, future))
            return await future
        finally:
            self.log_room.release(taken)

    async def _loop(self, queue: asyncio.Queue[_Pending], max_lines: int | None) -> None:
        settings = self.ctx.settings
        limit = settings.gateway_batch_max
        delay = settings.gateway_batch_delay_ms / 1000
        lines = 0

        def room() -> bool:
            return len(batch) < limit and (max_lines is None or lines < max_lines)

        def take() -> None:
            nonlocal lines
            while room() and not queue.empty():
                pending = queue.get_nowait()
                batch.append(pending)
                if isinstance(pending.frame, LogBatch):
                    lines += len(pending.frame.entries)

        while True:
            first = await queue.get()
            batch = [first]
            lines = len(first.frame.entries) if isinstance(first.frame, LogBatch) else 0
            take()
            if room() and delay > 0:
                # One short sleep, then whatever came meanwhile: cheaper than waiting per frame.
                await asyncio.sleep(delay)
                take()
            await self._run(batch)

    async def _run(self, batch: list[_Pending]) -> None:
        attempts = self.ctx.settings.db_retry_attempts
        started = time.perf_counter()
        try:
            try:
                results = await run_in_transaction(
                    self.ctx.sessions, lambda s: self._work(s, batch, isolate=False), attempts=attempts
                )
            except Exception as exc:
                if is_retryable(exc):
                    raise
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
        logged: Counter[str] = Counter()
        for result in results:
            if result.logged:
                logged.update(result.logged)
        if logged:
            LOG_COMMIT_LATENCY.observe(time.perf_counter() - started)
            for level, n in logged.items():
                LOG_LINES_INGESTED.labels(level=level).inc(n)
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
        order = sorted(range(len(batch)), key=lambda n: batch[n].source.robot.id)
        if not isolate:
            await self._work_together(session, batch, order, locked, cache, results)
            return [r if r is not None else Applied() for r in results]
        for i in order:
            pending = batch[i]
            try:
                async with session.begin_nested():
                    results[i] = await self._apply_one(
                        session, pending.source, pending.frame, locked, cache, None
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

    async def _work_together(
        self,
        session: AsyncSession,
        batch: list[_Pending],
        order: list[int],
        locked: dict[uuid.UUID, Any],
        cache: tasks.BatchCache,
        results: list[Applied | None],
    ) -> None:
        """The batch without savepoints: the guards of all reliable frames in two statements, the
        hot path (takes, Successful finishes) a few statements for all (``hotpath``), the rest one
        frame at a time, the history in one insert."""
        claims = [
            (batch[i].source.robot.id, batch[i].frame.seq)
            for i in order
            if not isinstance(batch[i].frame, _REQUESTS) and not batch[i].source.control
        ]
        fresh = await hotpath.claim_seqs(session, claims)
        events = hotpath.Events()
        per_robot = Counter(p.source.robot.id for p in batch)
        takes: dict[tuple[uuid.UUID, str], list[int]] = {}
        finishes: list[int] = []
        for i in order:
            pending = batch[i]
            robot = pending.source.robot
            if per_robot[robot.id] != 1:
                continue  # a robot with two frames here (a replaced connection): one by one, in order
            frame = pending.frame
            if isinstance(frame, TaskTake):
                takes.setdefault((robot.account_id, frame.queue), []).append(i)
            elif (
                isinstance(frame, TaskFinish)
                and frame.outcome == "successful"
                and (robot.id, frame.seq) in fresh
            ):
                finishes.append(i)
        done: set[int] = set()
        for (account_id, name), idxs in takes.items():
            try:
                queue = await self.queue_names.get(session, cache, account_id, name)
            except tasks.DomainError as exc:
                for i in idxs:
                    frame = batch[i].frame
                    assert isinstance(frame, TaskTake)
                    results[i] = Applied(reply=tasks.refused(frame, tasks.reply_error(exc, frame)))
                    done.add(i)
                continue
            wanted = []
            for i in idxs:
                frame = batch[i].frame
                assert isinstance(frame, TaskTake)
                wanted.append(hotpath.Take(batch[i].source.robot.id, frame.job_id, frame.lock_s))
            for i, taken in zip(idxs, await hotpath.take_many(session, queue, wanted, events), strict=True):
                if taken is not None:
                    frame = batch[i].frame
                    assert isinstance(frame, TaskTake)
                    results[i] = Applied(reply=tasks.taken_reply(frame, queue, taken))
                    done.add(i)
        if finishes:
            wanted_f = []
            for i in finishes:
                frame = batch[i].frame
                assert isinstance(frame, TaskFinish)
                robot = batch[i].source.robot
                wanted_f.append(
                    hotpath.Finish(
                        robot.account_id,
                        robot.id,
                        frame.task_id,
                        frame.lock_token,
                        frame.reason,
                        frame.output,
                    )
                )
            for i, good in zip(finishes, await hotpath.finish_many(session, wanted_f, events), strict=True):
                if good:
                    frame = batch[i].frame
                    assert isinstance(frame, TaskFinish)
                    results[i] = Applied(reply=TaskFinished(seq=frame.seq, request_id=frame.request_id))
                    done.add(i)
        logs: list[tuple[store.RobotIdentity, list[LogEntry]]] = []
        for i in order:
            if i in done:
                continue
            pending = batch[i]
            frame = pending.frame
            if isinstance(frame, LogBatch):
                # Every fresh log frame of the batch in one COPY / one insert, after the rest.
                if pending.source.control or (pending.source.robot.id, frame.seq) in fresh:
                    logs.append((pending.source.robot, frame.entries))
                    results[i] = Applied(logged=Counter(map(_LEVEL_OF, frame.entries)))
                else:
                    results[i] = Applied()
                continue
            results[i] = await self._apply_one(session, pending.source, frame, locked, cache, fresh)
        if logs:
            await store.store_logs(session, logs)
        await events.flush(session)

    async def _apply_one(
        self,
        session: AsyncSession,
        source: Source,
        frame: Batched,
        locked: dict[uuid.UUID, Any],
        cache: tasks.BatchCache,
        claimed: set[tuple[uuid.UUID, int]] | None,
    ) -> Applied:
        """One frame, once: ``seq`` above ``inbound_seq``, else a replay that changes nothing.

        ``claimed``: the frames of the batch whose guard ``hotpath.claim_seqs`` passed already; None
        in an isolated run, where each frame claims its own, under its savepoint.

        Control connections have no sequence of their own: their requests are deduplicated by
        ``request_id`` alone. Requests (``task.take``...) are never replayed: no guard."""
        robot = source.robot
        isolate = claimed is None

        async def is_fresh() -> bool:
            if claimed is None:
                return await store.claim_seq(session, robot.id, frame.seq)
            return (robot.id, frame.seq) in claimed

        if isinstance(frame, _TASK_FRAMES + _RESOURCE_FRAMES):
            fresh = True if isinstance(frame, _REQUESTS) else await is_fresh()
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
        fresh = True if source.control else await is_fresh()
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
            out.logged = Counter(map(_LEVEL_OF, frame.entries))
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
        """A task or resource frame (its seq already claimed, so a refusal is answered and
        acknowledged once, like any applied frame).

        The libs raise what a robot caused before they write anything (their documented rule), so
        a refusal leaves the batch's transaction usable and costs nothing. Should one ever leave
        the transaction broken, the next statement fails, the batch is re-run isolated, and there
        each task/resource frame has a savepoint of its own."""
        try:
            if not isolate:
                return await self._shared(session, robot, frame, cache)
            async with session.begin_nested():
                return await self._shared(session, robot, frame, cache)
        except tasks.DomainError as exc:
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
