"""The robot's connection to the gateway: protocol v1 (docs/robot-protocol.md), jobs, reconnects.

``RobotClient.run`` connects, says ``hello``, replays unacknowledged frames after ``welcome``,
heart-beats, runs the jobs it is given (one subprocess each, see ``runner``) and reports their
status and logs. Every report goes through the on-disk ``Journal`` first, so a gateway restart or a
network cut loses nothing and doubles nothing: the gateway applies each ``seq`` once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import socket
import sys
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from rpa_protocol import (
    PROTOCOL_VERSION,
    Ack,
    BadFrame,
    Error,
    Heartbeat,
    Hello,
    JobInterrupt,
    JobReport,
    JobRequest,
    JobRequested,
    JobStart,
    JobStatus,
    JobStop,
    LogBatch,
    LogEntry,
    ReliableFrame,
    Welcome,
    encode,
    parse_gateway_frame,
)
from rpa_protocol.codes import (
    CAPABILITY_JOB_REQUEST,
    CAPABILITY_JOBS,
    CAPABILITY_LOGS,
    CAPABILITY_RESOURCES,
    CAPABILITY_TASKS,
    CLOSE_FORBIDDEN,
    CLOSE_REPLACED,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNSUPPORTED,
    MAX_ERROR_CHARS,
    MAX_MESSAGE_BYTES,
)
from rpa_robot import __version__
from rpa_robot.ids import time_ordered_id
from rpa_robot.journal import Journal
from rpa_robot.requests import Requests
from rpa_robot.runner import PackageCache, PackageError, RunResult, ScriptRun, extract
from rpa_robot.screenshots import Spool

if TYPE_CHECKING:
    import httpx

CAPABILITIES = [
    CAPABILITY_JOBS,
    CAPABILITY_LOGS,
    CAPABILITY_JOB_REQUEST,
    CAPABILITY_TASKS,
    CAPABILITY_RESOURCES,
]
LOG_BATCH_MAX = 500
LOG_BATCH_DELAY_S = 0.05
LOG_BUFFER_LINES = 100_000
"""Log lines not yet acknowledged that the robot holds (journal and batch); beyond it, it reads no
more from its scripts until acks make room, so a script's ``sdk.log`` (and its prints) block."""

# Exit codes of ``rpa-robot run``.
EXIT_OK = 0
EXIT_REFUSED = 3  # wrong key, robot inactive or deleted
EXIT_REPLACED = 4  # another connection of this robot took over
EXIT_UNSUPPORTED = 5  # the gateway does not speak our protocol version
_FATAL_CLOSE = {
    CLOSE_UNAUTHORIZED: EXIT_REFUSED,
    CLOSE_FORBIDDEN: EXIT_REFUSED,
    CLOSE_REPLACED: EXIT_REPLACED,
    CLOSE_UNSUPPORTED: EXIT_UNSUPPORTED,
}


class Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class Options:
    gateway: str
    key: str
    state_dir: Path
    cache_dir: Path
    unattended: bool = False
    exit_after_job: bool = False
    max_backoff_s: float = 30.0
    screenshot_on_failure: bool = True
    log_buffer_lines: int = LOG_BUFFER_LINES


def http_base(ws_url: str) -> str:
    """``ws://host:port/robot/v1`` -> ``http://host:port`` (packages are fetched over HTTP)."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def _storable(text: str) -> str:
    """Text the gateway accepts: no NUL, valid UTF-8, a message within its byte limit."""
    text = text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    data = text.encode("utf-8")
    if len(data) > MAX_MESSAGE_BYTES:
        text = data[: MAX_MESSAGE_BYTES - 16].decode("utf-8", "ignore") + " [truncated]"
    return text


def log_entry(entry: dict[str, Any], job_id: str | None) -> LogEntry:
    """A log line from the script (or its output streams) as the protocol's ``LogEntry``.

    What a script writes is not ours to refuse: text the gateway would refuse is mended (NUL
    replaced, cut to the byte limit) and fields it cannot store are dropped, so the line is kept."""
    doc = {**entry, "message": _storable(str(entry.get("message", ""))), "job_id": job_id}
    try:
        return LogEntry.model_validate(doc)
    except ValidationError:
        pass
    try:
        line_id = uuid.UUID(str(entry.get("id")))
    except ValueError:
        line_id = time_ordered_id()
    level = entry.get("level")
    return LogEntry(
        id=line_id,
        level=level if level in ("Debug", "Info", "Warning", "Error", "Critical") else "Info",
        message=doc["message"],
        at=datetime.now(UTC),
        job_id=uuid.UUID(job_id) if job_id else None,
    )


def say(message: str) -> None:
    print(f"rpa-robot: {message}", file=sys.stderr, flush=True)


class KnownJobs:
    """Job attempts this robot has started, on disk: a re-offer after a reconnect never reruns one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: dict[str, str] = {}
        if path.exists():
            with contextlib.suppress(ValueError, OSError):
                self.items = dict(json.loads(path.read_text(encoding="utf-8")))

    def get(self, key: str) -> str | None:
        return self.items.get(key)

    def set(self, key: str, state: str) -> None:
        self.items[key] = state
        done = [k for k, v in self.items.items() if v == "done"]
        for k in done[:-200]:  # remember recent ones only
            del self.items[k]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.items), encoding="utf-8")
        tmp.replace(self.path)


def retry_after_s(exc: BaseException | None) -> float | None:
    """The seconds a gateway (or its balancer) that answered 503 asked us to wait, if it did."""
    if not isinstance(exc, InvalidStatus) or exc.response.status_code != 503:
        return None
    try:
        return float(exc.response.headers.get("Retry-After", ""))
    except ValueError:
        return None


def next_wait(exc: BaseException | None, backoff: float, max_backoff_s: float) -> tuple[float, float]:
    """How long to wait before connecting again, and the backoff after that.

    No answer (the gateway is gone, restarting, unreachable): exponential backoff with full jitter,
    so a restarted gateway is not stampeded. A 503 with ``Retry-After`` (the gateway is up, its
    database is away, e.g. failing over): come back when it says, jittered, without growing the
    backoff, so the robot is back within about that long after the database is; doubling there would
    leave it away for up to ``max_backoff_s`` after everything recovered."""
    asked = retry_after_s(exc)
    if asked is not None:
        asked = min(max(asked, 0.2), max_backoff_s)
        return random.uniform(0.1, asked), backoff
    return random.uniform(0.1, backoff), min(max_backoff_s, backoff * 2)


class RobotClient:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.journal = Journal(options.state_dir)
        self.known = KnownJobs(options.state_dir / "jobs.json")
        self.cache = PackageCache(options.cache_dir)
        self.work_dir = options.state_dir / "work"
        self.ws: ClientConnection | None = None
        self.sent_upto = 0
        self.wake = asyncio.Event()
        self.runs: dict[str, ScriptRun] = {}  # job id -> the running script
        self.early_controls: dict[str, str] = {}  # job id -> stop/interrupt that came before the script
        self.seen_commands: deque[str] = deque(maxlen=1000)
        self.tasks: set[asyncio.Task[None]] = set()
        self.log_buffer: list[LogEntry] = []
        self.log_flush: asyncio.TimerHandle | None = None
        self.log_drained = asyncio.Event()
        self.jobs_finished = 0
        self.done = asyncio.Event()
        self.heartbeat_s = 15.0
        self.http: httpx.AsyncClient | None = None
        self.requests = Requests(self)
        self.spool = Spool(
            options.state_dir / "screenshots", self._http, options.key, say, on_empty=self._maybe_done
        )

    # Outbox --------------------------------------------------------------------------------------

    def emit(self, make: Callable[[int], ReliableFrame]) -> int:
        """Journal a reliable frame (``make`` gets its seq) and wake the sender; its seq."""
        self.flush_logs()  # keep a job's logs before its status
        seq = self.journal.append(make)
        self.wake.set()
        return seq

    def report(
        self,
        job_id: str,
        attempt: int,
        status: JobReport,
        output: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        self.emit(
            lambda seq: JobStatus(
                seq=seq,
                job_id=uuid.UUID(job_id),
                attempt=attempt,
                status=status,
                output=output,
                error=_storable(error)[:MAX_ERROR_CHARS] if error else None,
                at=datetime.now(UTC),
            )
        )

    def on_log(self, job_id: str | None) -> Any:
        def sink(entry: dict[str, Any]) -> None:
            self.log_buffer.append(log_entry(entry, job_id))
            if len(self.log_buffer) >= LOG_BATCH_MAX:
                self.flush_logs()
            elif self.log_flush is None:
                self.log_flush = asyncio.get_running_loop().call_later(LOG_BATCH_DELAY_S, self.flush_logs)

        return sink

    async def log_room(self) -> None:
        """Return once the robot holds fewer log lines than its bound (backpressure, see
        docs/robot-protocol.md): called before each line is read from a script."""
        while self.journal.log_lines + len(self.log_buffer) >= self.o.log_buffer_lines:
            self.flush_logs()  # what waits in the batch goes to the journal (and out) first
            self.log_drained.clear()
            await self.log_drained.wait()

    def flush_logs(self) -> None:
        if self.log_flush is not None:
            self.log_flush.cancel()
            self.log_flush = None
        if self.log_buffer:
            entries, self.log_buffer = self.log_buffer, []
            self.journal.append(lambda seq: LogBatch(seq=seq, entries=entries))
            self.wake.set()

    async def _sender(self, ws: ClientConnection) -> None:
        while True:
            self.wake.clear()
            for seq, line in self.journal.after(self.sent_upto):
                await ws.send(line)
                self.sent_upto = seq
            await self.wake.wait()

    def _http(self) -> httpx.AsyncClient:
        """The HTTP client for package downloads, made (and httpx imported) on first use."""
        if self.http is None:
            import httpx

            self.http = httpx.AsyncClient(base_url=http_base(self.o.gateway), timeout=60)
        return self.http

    # Main loop -----------------------------------------------------------------------------------

    async def run(self) -> int:
        backoff = 0.5
        failures = 0
        uploads = asyncio.create_task(self.spool.run())
        try:
            while True:
                try:
                    connected = await self._session()
                    if connected:
                        backoff, failures = 0.5, 0
                except Refused as exc:
                    say(f"refused by the gateway: {exc.reason}")
                    await self._abort_jobs()
                    return exc.code
                except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as exc:
                    failures += 1
                    if failures == 1 or failures % 20 == 0:
                        say(f"gateway unreachable ({type(exc).__name__}); retrying (attempt {failures})")
                    wait, backoff = next_wait(exc, backoff, self.o.max_backoff_s)
                else:
                    wait, backoff = next_wait(None, backoff, self.o.max_backoff_s)
                if self.done.is_set():
                    return EXIT_OK
                await asyncio.sleep(wait)
        finally:
            await self._abort_jobs()
            uploads.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await uploads
            if self.http is not None:
                await self.http.aclose()
            self.journal.close()

    async def _session(self) -> bool:
        """One connection, to its end. True when it got as far as ``welcome``."""
        try:
            ws = await connect(
                self.o.gateway,
                additional_headers={"Authorization": f"Bearer {self.o.key}"},
                open_timeout=10,
                ping_interval=20,
                ping_timeout=20,
                max_size=16 * 1024 * 1024,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise Refused(EXIT_REFUSED, f"HTTP {status}") from exc
            raise
        welcomed = False
        try:
            await ws.send(
                encode(
                    Hello(
                        protocol=PROTOCOL_VERSION,
                        robot_version=__version__,
                        machine=_storable(socket.gethostname())[:255],
                        capabilities=CAPABILITIES,
                        attended=not self.o.unattended,
                        exit_after_job=self.o.exit_after_job,
                    )
                )
            )
            async with asyncio.timeout(15):
                welcome = _gateway_frame(await ws.recv())
            if not isinstance(welcome, Welcome):
                say(f"gateway answered {_describe(welcome)}")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await ws.wait_closed()
            else:
                welcomed = True
                await self._connected(ws, welcome)
        except ConnectionClosed:
            pass
        finally:
            self.ws = None
            await ws.close()
        code = ws.close_code
        if code in _FATAL_CLOSE:
            raise Refused(_FATAL_CLOSE[code], f"{code} {ws.close_reason}")
        return welcomed

    async def _connected(self, ws: ClientConnection, welcome: Welcome) -> None:
        self.heartbeat_s = welcome.heartbeat_interval_s or 15.0
        last_seq = welcome.resume.last_seq if welcome.resume is not None else 0
        self.journal.resume(last_seq)
        self.sent_upto = last_seq
        self.ws = ws
        say(f"connected as {welcome.robot_name} (replaying {len(self.journal.pending)} frames)")
        if welcome.unlicensed:
            # The gateway keeps the connection but sends no work until a seat is free on a reconnect.
            say(f"unlicensed: {welcome.unlicensed}; no work is sent to this robot")
        self.requests.on_connected(welcome.server_time)
        tasks = {
            asyncio.create_task(self._sender(ws)),
            asyncio.create_task(self._heartbeats(ws)),
            asyncio.create_task(self._receive(ws)),
            asyncio.create_task(self.requests.renew_loop()),
            asyncio.create_task(self.done.wait()),
        }
        await self.requests.after_welcome()
        try:
            finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.requests.on_disconnected()
            for task in tasks:
                task.cancel()
        for task in finished:
            exc = None if task.cancelled() else task.exception()
            if exc is not None and not isinstance(exc, ConnectionClosed):
                raise exc

    async def _heartbeats(self, ws: ClientConnection) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            job = next(iter(self.runs), None)
            await ws.send(encode(Heartbeat(job_id=uuid.UUID(job) if job else None)))

    async def _receive(self, ws: ClientConnection) -> None:
        async for raw in ws:
            frame = _gateway_frame(raw)
            if self.requests.on_frame(frame):
                continue
            if isinstance(frame, Ack):
                self.journal.ack(frame.seq)
                self.log_drained.set()
                self._maybe_done()
            elif isinstance(frame, Error):
                say(f"gateway refused a frame: {frame.code}: {frame.detail}")
                if frame.seq > 0:
                    self.journal.drop(frame.seq)
                    self.log_drained.set()
            elif isinstance(frame, JobStart | JobStop | JobInterrupt):
                cid = str(frame.id)
                if cid in self.seen_commands:
                    continue
                self.seen_commands.append(cid)
                if isinstance(frame, JobStart):
                    self._on_start(frame)
                else:
                    await self._on_control(frame)

    def _maybe_done(self) -> None:
        if (
            self.o.exit_after_job
            and self.jobs_finished > 0
            and not self.runs
            and self.journal.empty
            and self.spool.empty
        ):
            self.done.set()

    # Jobs ----------------------------------------------------------------------------------------

    def _on_start(self, frame: JobStart) -> None:
        job_id, attempt = str(frame.job_id), frame.attempt
        key = f"{job_id}:{attempt}"
        if self.known.get(key) is not None:
            return  # already running or done here: a re-offer after a reconnect
        if frame.state != "Starting":
            # The gateway thinks this attempt runs here, but this robot has no trace of it (its
            # state was lost): say so, rather than run the attempt a second time.
            self.known.set(key, "done")
            lost: JobReport = "interrupted" if frame.state == "Interrupting" else "failed"
            self.report(job_id, attempt, lost, error="the robot no longer runs this attempt (it restarted)")
            return
        if self.o.exit_after_job and (self.jobs_finished > 0 or self.runs):
            return  # this robot logs off after one job: another robot will take it
        self.known.set(key, "running")
        task = asyncio.create_task(self._run_job(frame))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _on_control(self, frame: JobStop | JobInterrupt) -> None:
        job_id = str(frame.job_id)
        kind = "stop" if isinstance(frame, JobStop) else "interrupt"
        if frame.reason:
            say(f"job {job_id}: {kind} ({frame.reason})")
        run = self.runs.get(job_id)
        if run is None:
            if self.known.get(f"{job_id}:{frame.attempt}") == "running":
                self.early_controls[job_id] = kind
            return
        if kind == "stop":
            run.request_stop()
        else:
            await run.kill()

    async def _run_job(self, frame: JobStart) -> None:
        job_id, attempt = str(frame.job_id), frame.attempt
        workdir = self.work_dir / f"{job_id}-{attempt}"
        result: RunResult
        try:
            try:
                package = await self.cache.ensure(
                    self._http, frame.package_url, self.o.key, frame.sha256, frame.size
                )
                await asyncio.to_thread(extract, package, workdir)
            except PackageError as exc:
                result = RunResult("failed", {}, str(exc), None)
            else:
                early = self.early_controls.pop(job_id, None)
                if early is not None:
                    result = RunResult("stopped" if early == "stop" else "interrupted", {}, None, None)
                else:
                    run = ScriptRun(
                        workdir=workdir,
                        entry_point=frame.entry_point,
                        input_args=dict(frame.input_args),
                        sink=self.on_log(job_id),
                        job_id=job_id,
                        on_request=self.requests.handle,
                        screenshot_dir=self.spool.dir,
                        on_screenshot=self.spool.wake,
                        room=self.log_room,
                    )
                    try:
                        await run.start()
                    except (PackageError, OSError) as exc:
                        result = RunResult("failed", {}, str(exc), None)
                    else:
                        self.runs[job_id] = run
                        self.report(job_id, attempt, "running")
                        late = self.early_controls.pop(job_id, None)
                        if late == "stop":
                            run.request_stop()
                        elif late == "interrupt":
                            await run.kill()
                        try:
                            result = await run.wait()
                        finally:
                            self.requests.run_ended(run)
                        if result.status == "failed" and self.o.screenshot_on_failure:
                            await self._failure_screenshot(job_id)
            self.report(job_id, attempt, result.status, result.output, result.error)
        finally:
            self.runs.pop(job_id, None)
            self.known.set(f"{job_id}:{attempt}", "done")
            shutil.rmtree(workdir, ignore_errors=True)
            self.jobs_finished += 1
            self._maybe_done()

    async def _failure_screenshot(self, job_id: str) -> None:
        """The desktop as the failed script left it, attached to a log line saying so."""
        message_id = str(uuid.uuid4())
        shot_id = await self.spool.capture(job_id, message_id=message_id)
        if shot_id is not None:
            self.on_log(job_id)(
                {
                    "id": message_id,
                    "level": "Error",
                    "message": "screenshot of the desktop when the job failed",
                    "fields": {"screenshot_id": shot_id},
                    "at": datetime.now(UTC).isoformat(),
                }
            )

    async def _abort_jobs(self) -> None:
        """The robot is going away: no script it started outlives it."""
        for run in list(self.runs.values()):
            await run.kill()
        for task in list(self.tasks):
            task.cancel()


async def request_job(
    gateway: str,
    key: str,
    process_name: str | None,
    input_args: dict[str, Any],
    timeout_s: float = 30,
    *,
    trigger_name: str | None = None,
) -> tuple[str | None, str | None]:
    """``job.request`` over a control connection (no ``jobs`` capability): (job id, error).

    Names a process (a job on this robot), or a robot command trigger (``trigger_name``; the
    trigger decides process, target, priority and arguments, ``input_args`` merged over its own).

    A control connection has no journal: its frames are numbered from 1 and deduplicated by
    ``request_id`` alone (docs/robot-protocol.md 2.7)."""
    request_id = uuid.uuid4()
    try:
        ws = await connect(
            gateway, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=timeout_s
        )
    except InvalidStatus as exc:
        return None, f"refused by the gateway: HTTP {exc.response.status_code}"
    async with ws:
        await ws.send(
            encode(
                Hello(
                    protocol=PROTOCOL_VERSION,
                    robot_version=__version__,
                    machine=_storable(socket.gethostname())[:255],
                    capabilities=[CAPABILITY_JOB_REQUEST],
                    attended=True,
                )
            )
        )
        async with asyncio.timeout(timeout_s):
            welcome = _gateway_frame(await ws.recv())
            if not isinstance(welcome, Welcome):
                return None, f"unexpected {_describe(welcome)}"
            await ws.send(
                encode(
                    JobRequest(
                        seq=1,
                        request_id=request_id,
                        process_name=process_name,
                        trigger_name=trigger_name,
                        input_args=input_args,
                    )
                )
            )
            async for raw in ws:
                frame = _gateway_frame(raw)
                if isinstance(frame, JobRequested) and frame.request_id == request_id:
                    return (str(frame.job_id) if frame.job_id else None), frame.error
                if isinstance(frame, Error):
                    return None, frame.detail
    return None, "the gateway closed the connection"


def _gateway_frame(raw: str | bytes) -> Any:
    """A gateway frame, or None for one this robot does not know or cannot read (ignored)."""
    try:
        return parse_gateway_frame(raw)
    except BadFrame as exc:
        say(f"unreadable frame from the gateway ignored: {exc.detail}")
        return None


def _describe(frame: Any) -> str:
    if isinstance(frame, Error):
        return f"error {frame.code}: {frame.detail}"
    return repr(getattr(frame, "type", frame))
