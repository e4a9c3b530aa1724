"""One robot's live WebSocket, and the frames the gateway sends on it."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque

from pydantic import BaseModel
from starlette.websockets import WebSocket, WebSocketState

from rpa_common.nats.messages import JobOffer
from rpa_gateway import store
from rpa_gateway.tasks import Watched
from rpa_protocol import BadFrame, Error, JobInterrupt, JobStart, JobStop, command_id, encode
from rpa_protocol.codes import BAD_FRAME_LIMIT, BAD_FRAME_WINDOW_S, MAX_WATCHES


class Connection:
    """Small on purpose: a replica holds thousands."""

    __slots__ = (
        "_send_lock",
        "acked",
        "active_jobs",
        "bad",
        "capabilities",
        "closing",
        "connection_id",
        "control",
        "finished",
        "logged_off",
        "robot",
        "single_job",
        "watches",
        "ws",
    )

    def __init__(self, ws: WebSocket, robot: store.RobotIdentity) -> None:
        self.ws = ws
        self.robot = robot
        self.connection_id = uuid.uuid4()
        self.capabilities: frozenset[str] = frozenset()
        # A control connection (hello without "jobs") only asks for jobs; it takes none.
        self.control = False
        # The highest robot seq acknowledged on this connection: an ack never goes below it, so a
        # re-sent old frame is answered with the robot's real position, not its own lower seq.
        self.acked = 0
        self.active_jobs: dict[uuid.UUID, int] = {}  # job id -> attempt offered on this connection
        # Jobs this gateway ended on the robot's report (and already refreshed the status for):
        # their JOB_STATE echo needs no second status refresh.
        self.finished: set[uuid.UUID] = set()
        self.bad: deque[float] = deque()
        self.closing = False
        # A robot started for one job (``exit_after_job``) is Disconnected as soon as that job ends,
        # so no other job is dispatched to it while it is leaving.
        self.single_job = False
        self.logged_off = False
        # Resources this connection watches (``resource.get`` with ``watch``), by folded name; None
        # until the first one, so that the thousands of connections that watch nothing stay small.
        self.watches: dict[str, Watched] | None = None
        self._send_lock = asyncio.Lock()

    async def send(self, frame: BaseModel) -> bool:
        """Send one frame; False when the connection is already gone."""
        async with self._send_lock:
            if self.closing or self.ws.application_state != WebSocketState.CONNECTED:
                return False
            try:
                await self.ws.send_text(encode(frame))
                return True
            except Exception:  # the peer went away between the check and the send
                return False

    async def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason)

    async def send_error(self, exc: BadFrame) -> None:
        await self.send(Error(seq=exc.ref_seq or 0, code=exc.code, detail=exc.detail, field=exc.field))

    def too_many_bad(self) -> bool:
        """Count one bad frame; True when the robot sent too many within the window."""
        now = time.monotonic()
        self.bad.append(now)
        while self.bad and self.bad[0] < now - BAD_FRAME_WINDOW_S:
            self.bad.popleft()
        return len(self.bad) > BAD_FRAME_LIMIT

    def may_watch(self, name: str) -> bool:
        return self.watches is None or len(self.watches) < MAX_WATCHES or name.casefold() in self.watches

    def watch(self, watched: Watched) -> None:
        if self.watches is None:
            self.watches = {}
        self.watches[watched.name.casefold()] = watched

    def next_ack(self, seq: int) -> int:
        self.acked = max(self.acked, seq)
        return self.acked

    async def offer(self, offer: JobOffer) -> None:
        """``job.start`` (then the stop or interrupt the job is already in): remembered as held."""
        self.active_jobs[offer.job_id] = offer.attempt
        await self.send(job_start(offer))
        # A job already asked to stop while the robot was away hears it again after the start.
        if offer.state == "Stopping":
            await self.send(job_stop(offer.job_id, offer.attempt))
        elif offer.state == "Interrupting":
            await self.send(job_interrupt(offer.job_id, offer.attempt))


def job_start(offer: JobOffer) -> JobStart:
    return JobStart(
        id=command_id(offer.job_id, offer.attempt, "start"),
        job_id=offer.job_id,
        attempt=offer.attempt,
        state=offer.state.value,
        process_id=offer.process_id,
        process_name=offer.process_name,
        version_id=offer.version_id,
        version=offer.version,
        sha256=offer.sha256,
        size=offer.size,
        entry_point=offer.entry_point,
        input_args=offer.input_args,
        package_url=f"/robot/v1/packages/{offer.version_id}",
    )


def job_stop(job_id: uuid.UUID, attempt: int, reason: str | None = None) -> JobStop:
    return JobStop(id=command_id(job_id, attempt, "stop"), job_id=job_id, attempt=attempt, reason=reason)


def job_interrupt(job_id: uuid.UUID, attempt: int, reason: str | None = None) -> JobInterrupt:
    return JobInterrupt(
        id=command_id(job_id, attempt, "interrupt"), job_id=job_id, attempt=attempt, reason=reason
    )
