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
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from rpa_robot import __version__
from rpa_robot.journal import Journal
from rpa_robot.runner import PackageCache, PackageError, RunResult, ScriptRun, extract

PROTOCOL_VERSION = 1
CAPABILITIES = ["jobs", "logs", "job.request"]
LOG_BATCH_MAX = 500
LOG_BATCH_DELAY_S = 0.05

# Exit codes of ``rpa-robot run``.
EXIT_OK = 0
EXIT_REFUSED = 3  # wrong key, robot inactive or deleted
EXIT_REPLACED = 4  # another connection of this robot took over
EXIT_UNSUPPORTED = 5  # the gateway does not speak our protocol version
_FATAL_CLOSE = {4401: EXIT_REFUSED, 4403: EXIT_REFUSED, 4409: EXIT_REPLACED, 4426: EXIT_UNSUPPORTED}


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


def http_base(ws_url: str) -> str:
    """``ws://host:port/robot/v1`` -> ``http://host:port`` (packages are fetched over HTTP)."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def _json(raw: str | bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        return {"type": "?", "detail": "not JSON"}
    return doc if isinstance(doc, dict) else {"type": "?", "detail": "not an object"}


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
        self.log_buffer: list[dict[str, Any]] = []
        self.log_flush: asyncio.TimerHandle | None = None
        self.jobs_finished = 0
        self.done = asyncio.Event()
        self.heartbeat_s = 15.0
        self.http: httpx.AsyncClient | None = None

    # Outbox --------------------------------------------------------------------------------------

    def emit(self, frame: dict[str, Any]) -> None:
        """Journal a reliable frame and wake the sender."""
        if frame["type"] != "log":
            self.flush_logs()  # keep a job's logs before its status
        self.journal.append(frame)
        self.wake.set()

    def on_log(self, job_id: str | None) -> Any:
        def sink(entry: dict[str, Any]) -> None:
            entry["job_id"] = job_id
            self.log_buffer.append(entry)
            if len(self.log_buffer) >= LOG_BATCH_MAX:
                self.flush_logs()
            elif self.log_flush is None:
                self.log_flush = asyncio.get_running_loop().call_later(LOG_BATCH_DELAY_S, self.flush_logs)

        return sink

    def flush_logs(self) -> None:
        if self.log_flush is not None:
            self.log_flush.cancel()
            self.log_flush = None
        if self.log_buffer:
            entries, self.log_buffer = self.log_buffer, []
            self.journal.append({"type": "log", "entries": entries})
            self.wake.set()

    async def _sender(self, ws: ClientConnection) -> None:
        while True:
            self.wake.clear()
            for seq, line in self.journal.after(self.sent_upto):
                await ws.send(line)
                self.sent_upto = seq
            await self.wake.wait()

    # Main loop -----------------------------------------------------------------------------------

    async def run(self) -> int:
        self.http = httpx.AsyncClient(base_url=http_base(self.o.gateway), timeout=60)
        backoff = 0.5
        failures = 0
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
                if self.done.is_set():
                    return EXIT_OK
                # Exponential backoff with full jitter: a restarted gateway is not stampeded.
                await asyncio.sleep(random.uniform(0.1, backoff))
                backoff = min(self.o.max_backoff_s, backoff * 2)
        finally:
            await self._abort_jobs()
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
                json.dumps(
                    {
                        "type": "hello",
                        "seq": 0,
                        "protocol": PROTOCOL_VERSION,
                        "robot_version": __version__,
                        "machine": socket.gethostname()[:255],
                        "capabilities": CAPABILITIES,
                        "attended": not self.o.unattended,
                        "exit_after_job": self.o.exit_after_job,
                    }
                )
            )
            async with asyncio.timeout(15):
                welcome = _json(await ws.recv())
            if welcome.get("type") != "welcome":
                say(f"gateway answered {welcome.get('type')!r}: {welcome.get('detail', '')}")
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

    async def _connected(self, ws: ClientConnection, welcome: dict[str, Any]) -> None:
        self.heartbeat_s = float(welcome.get("heartbeat_interval_s") or 15)
        last_seq = int((welcome.get("resume") or {}).get("last_seq") or 0)
        self.journal.resume(last_seq)
        self.sent_upto = last_seq
        self.ws = ws
        say(f"connected as {welcome.get('robot_name')} (replaying {len(self.journal.pending)} frames)")
        tasks = {
            asyncio.create_task(self._sender(ws)),
            asyncio.create_task(self._heartbeats(ws)),
            asyncio.create_task(self._receive(ws)),
            asyncio.create_task(self.done.wait()),
        }
        try:
            finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
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
            await ws.send(json.dumps({"type": "heartbeat", "seq": 0, "job_id": job}))

    async def _receive(self, ws: ClientConnection) -> None:
        async for raw in ws:
            try:
                frame = json.loads(raw)
            except ValueError:
                continue
            kind = frame.get("type")
            if kind == "ack":
                self.journal.ack(int(frame.get("seq", 0)))
                self._maybe_done()
            elif kind == "error":
                say(f"gateway refused a frame: {frame.get('detail')}")
                ref = int(frame.get("seq") or 0)
                if ref > 0:
                    self.journal.drop(ref)
            elif kind in ("job.start", "job.stop", "job.interrupt"):
                cid = str(frame.get("id"))
                if cid in self.seen_commands:
                    continue
                self.seen_commands.append(cid)
                if kind == "job.start":
                    self._on_start(frame)
                else:
                    await self._on_control(kind.split(".")[1], frame)

    def _maybe_done(self) -> None:
        if self.o.exit_after_job and self.jobs_finished > 0 and not self.runs and self.journal.empty:
            self.done.set()

    # Jobs ----------------------------------------------------------------------------------------

    def _on_start(self, frame: dict[str, Any]) -> None:
        job_id, attempt = str(frame["job_id"]), int(frame["attempt"])
        key = f"{job_id}:{attempt}"
        if self.known.get(key) is not None:
            return  # already running or done here: a re-offer after a reconnect
        if frame.get("state") != "Starting":
            # The gateway thinks this attempt runs here, but this robot has no trace of it (its
            # state was lost): say so, rather than run the attempt a second time.
            self.known.set(key, "done")
            lost = "interrupted" if frame.get("state") == "Interrupting" else "failed"
            self.emit(
                {
                    "type": "job.status",
                    "job_id": job_id,
                    "attempt": attempt,
                    "status": lost,
                    "error": "the robot no longer runs this attempt (it restarted)",
                }
            )
            return
        if self.o.exit_after_job and (self.jobs_finished > 0 or self.runs):
            return  # this robot logs off after one job: another robot will take it
        self.known.set(key, "running")
        task = asyncio.create_task(self._run_job(frame))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _on_control(self, kind: str, frame: dict[str, Any]) -> None:
        job_id = str(frame["job_id"])
        run = self.runs.get(job_id)
        if run is None:
            if self.known.get(f"{job_id}:{frame.get('attempt')}") == "running":
                self.early_controls[job_id] = kind
            return
        if kind == "stop":
            run.request_stop()
            grace = frame.get("grace_s")
            if isinstance(grace, int | float) and grace >= 0:
                self._later(grace, run)
        else:
            await run.kill()

    def _later(self, grace: float, run: ScriptRun) -> None:
        async def escalate() -> None:
            await asyncio.sleep(grace)
            if run.proc is not None and run.proc.returncode is None:
                await run.kill()

        task = asyncio.create_task(escalate())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run_job(self, frame: dict[str, Any]) -> None:
        job_id, attempt = str(frame["job_id"]), int(frame["attempt"])
        workdir = self.work_dir / f"{job_id}-{attempt}"
        result: RunResult
        try:
            try:
                assert self.http is not None
                package = await self.cache.ensure(
                    self.http, frame["package_url"], self.o.key, frame["sha256"], int(frame["size"])
                )
                await asyncio.to_thread(extract, package, workdir)
            except PackageError as exc:
                result = RunResult("failed", {}, str(exc), None)
            else:
                early = self.early_controls.pop(job_id, None)
                if early is not None:
                    status = "stopped" if early == "stop" else "interrupted"
                    result = RunResult(status, {}, None, None)
                else:
                    run = ScriptRun(
                        workdir=workdir,
                        entry_point=frame["entry_point"],
                        input_args=dict(frame.get("input_args") or {}),
                        sink=self.on_log(job_id),
                        job_id=job_id,
                    )
                    try:
                        await run.start()
                    except (PackageError, OSError) as exc:
                        result = RunResult("failed", {}, str(exc), None)
                    else:
                        self.runs[job_id] = run
                        self.emit(
                            {"type": "job.status", "job_id": job_id, "attempt": attempt, "status": "running"}
                        )
                        late = self.early_controls.pop(job_id, None)
                        if late == "stop":
                            run.request_stop()
                        elif late == "interrupt":
                            await run.kill()
                        result = await run.wait()
            report: dict[str, Any] = {
                "type": "job.status",
                "job_id": job_id,
                "attempt": attempt,
                "status": result.status,
                "output": result.output,
            }
            if result.error:
                report["error"] = result.error[:10_000]
            self.emit(report)
        finally:
            self.runs.pop(job_id, None)
            self.known.set(f"{job_id}:{attempt}", "done")
            shutil.rmtree(workdir, ignore_errors=True)
            self.jobs_finished += 1
            self._maybe_done()

    async def _abort_jobs(self) -> None:
        """The robot is going away: no script it started outlives it."""
        for run in list(self.runs.values()):
            await run.kill()
        for task in list(self.tasks):
            task.cancel()


async def request_job(
    gateway: str, key: str, process_name: str, input_args: dict[str, Any], timeout_s: float = 30
) -> tuple[str | None, str | None]:
    """``job.request`` over a control connection (no ``jobs`` capability): (job id, error)."""
    request_id = str(uuid.uuid4())
    try:
        ws = await connect(
            gateway, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=timeout_s
        )
    except InvalidStatus as exc:
        return None, f"refused by the gateway: HTTP {exc.response.status_code}"
    async with ws:
        await ws.send(
            json.dumps(
                {
                    "type": "hello",
                    "seq": 0,
                    "protocol": PROTOCOL_VERSION,
                    "robot_version": __version__,
                    "machine": socket.gethostname()[:255],
                    "capabilities": ["job.request"],
                    "attended": True,
                }
            )
        )
        async with asyncio.timeout(timeout_s):
            welcome = json.loads(await ws.recv())
            if welcome.get("type") != "welcome":
                return None, f"unexpected {welcome.get('type')}: {welcome.get('detail', '')}"
            await ws.send(
                json.dumps(
                    {
                        "type": "job.request",
                        "seq": 1,
                        "request_id": request_id,
                        "process_name": process_name,
                        "input_args": input_args,
                    }
                )
            )
            async for raw in ws:
                frame = json.loads(raw)
                if frame.get("type") == "job.requested" and frame.get("request_id") == request_id:
                    return frame.get("job_id"), frame.get("error")
                if frame.get("type") == "error":
                    return None, str(frame.get("detail"))
    return None, "the gateway closed the connection"
