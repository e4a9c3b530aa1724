"""Running one script: package cache, extraction, the child process, its logs, soft and hard stop.

The script runs as ``sys.executable <entry point>`` in a new session (its own process group), so a
hard stop can kill its whole tree. It gets its input through a file and its channel to the robot
through two pipes (see ``sdk``), never through its command line: ``RPA_SDK_FD`` carries the script's
log lines, output and requests to the robot; ``RPA_SDK_REPLY_FD`` carries the answers to its
requests (a task, a resource, a password) and pushes (a watched resource changed) back. Anonymous
pipes are seen by the script alone: what travels on them is never in a file or an argument.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import sys
import uuid
import zipfile
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psutil

from rpa_robot.ids import time_ordered_id

if TYPE_CHECKING:
    import httpx

LogSink = Callable[[dict[str, Any]], None]
"""Receives each log entry: ``{id, level, message, fields, at}``."""
RequestHandler = Callable[["ScriptRun", dict[str, Any]], Awaitable[dict[str, Any]]]
"""Answers one SDK request ``{id, op, args, timeout}``: ``{"result": ...}`` or ``{"error": {...}}``."""

MANIFEST = "rpa.json"


class PackageError(Exception):
    """The package could not be fetched, verified or unpacked."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


# Packages ---------------------------------------------------------------------------------------


class PackageCache:
    """Verified packages by sha256: each version is downloaded once."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        return self.directory / f"{sha256}.zip"

    async def ensure(
        self, client: Callable[[], httpx.AsyncClient], url: str, key: str, sha256: str, size: int
    ) -> Path:
        """The package, from the cache or downloaded. ``client`` makes the HTTP client only when a
        download is needed: importing httpx costs a robot's start-up a good part of a second on a
        busy terminal server, and a cached package needs none."""
        target = self.path_for(sha256)
        if target.exists() and await asyncio.to_thread(_sha256_of, target) == sha256:
            return target
        import httpx

        tmp = self.directory / f".{sha256}.{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        received = 0
        try:
            async with client().stream("GET", url, headers={"Authorization": f"Bearer {key}"}) as resp:
                if resp.status_code != 200:
                    raise PackageError(f"package download refused: HTTP {resp.status_code}")
                f = await asyncio.to_thread(open, tmp, "wb")
                try:
                    async for chunk in resp.aiter_bytes():
                        digest.update(chunk)
                        received += len(chunk)
                        await asyncio.to_thread(f.write, chunk)
                finally:
                    f.close()
        except httpx.HTTPError as exc:
            tmp.unlink(missing_ok=True)
            raise PackageError(f"package download failed: {type(exc).__name__}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if digest.hexdigest() != sha256 or received != size:
            tmp.unlink(missing_ok=True)
            raise PackageError("package checksum mismatch: the download does not match its sha256")
        os.replace(tmp, target)
        return target


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def extract(package: Path, destination: Path) -> dict[str, Any]:
    """Unpack a package zip (refusing paths that leave ``destination``); returns its manifest."""
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    root = destination.resolve()
    try:
        with zipfile.ZipFile(package) as zf:
            for info in zf.infolist():
                target = (root / info.filename).resolve()
                if not target.is_relative_to(root):
                    raise PackageError(f"package entry {info.filename!r} leaves the package")
            zf.extractall(root)
    except zipfile.BadZipFile as exc:
        raise PackageError("package is not a valid zip") from exc
    return read_manifest(root)


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.exists():
        raise PackageError(f"package has no {MANIFEST}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise PackageError(f"{MANIFEST} is not valid JSON") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("entry_point"), str):
        raise PackageError(f"{MANIFEST} has no entry_point")
    return doc


# The script -------------------------------------------------------------------------------------


@dataclass
class RunResult:
    status: Literal["successful", "failed", "stopped", "interrupted"]
    output: dict[str, Any]
    error: str | None
    exit_code: int | None


@dataclass
class ScriptRun:
    """One run of an entry point in ``workdir`` with ``input_args``; logs go to ``sink``."""

    workdir: Path
    entry_point: str
    input_args: dict[str, Any]
    sink: LogSink
    job_id: str | None = None
    on_request: RequestHandler | None = None
    screenshot_dir: Path | None = None
    on_screenshot: Callable[[], None] | None = None
    # Awaited before each line is read from the script: the robot's log buffer is full (the gateway
    # pushes back, or is away), so the script's next write blocks once its pipe is full.
    room: Callable[[], Awaitable[None]] | None = None
    output: dict[str, Any] = field(default_factory=dict)
    stop_requested: bool = False
    interrupted: bool = False
    proc: asyncio.subprocess.Process | None = None
    _readers: list[asyncio.Task[None]] = field(default_factory=list)
    _stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    _control_dir: Path | None = None
    _replies: asyncio.WriteTransport | None = None
    _requests: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def stop_file(self) -> Path:
        assert self._control_dir is not None
        return self._control_dir / "stop"

    async def start(self) -> None:
        entry = (self.workdir / self.entry_point).resolve()
        if not entry.is_file() or not entry.is_relative_to(self.workdir.resolve()):
            raise PackageError(f"entry point {self.entry_point!r} is not in the package")
        self._control_dir = self.workdir.parent / f".{self.workdir.name}.ctl"
        self._control_dir.mkdir(parents=True, exist_ok=True)
        self.stop_file.unlink(missing_ok=True)
        input_file = self._control_dir / "input.json"
        input_file.write_text(json.dumps(self.input_args), encoding="utf-8")
        read_fd, write_fd = os.pipe()
        reply_read_fd, reply_write_fd = os.pipe()
        env = dict(os.environ)
        # The robot's own secrets never reach the script.
        env.pop("RPA_ROBOT_KEY", None)
        env.update(
            {
                "RPA_INPUT_FILE": str(input_file),
                "RPA_SDK_FD": str(write_fd),
                "RPA_SDK_REPLY_FD": str(reply_read_fd),
                "RPA_STOP_FILE": str(self.stop_file),
                "PYTHONUNBUFFERED": "1",
                "PYTHONIOENCODING": "utf-8",
            }
        )
        if self.job_id:
            env["RPA_JOB_ID"] = self.job_id
        if self.screenshot_dir is not None:
            env["RPA_SCREENSHOT_DIR"] = str(self.screenshot_dir)
        else:
            env.pop("RPA_SCREENSHOT_DIR", None)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(entry),
                cwd=str(self.workdir),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(write_fd, reply_read_fd),
                start_new_session=True,
            )
        except BaseException:
            os.close(reply_write_fd)
            raise
        finally:
            os.close(write_fd)
            os.close(reply_read_fd)
        loop = asyncio.get_running_loop()
        self._replies, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(reply_write_fd, "wb", buffering=0)
        )
        sdk_reader = asyncio.StreamReader(limit=1024 * 1024)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(sdk_reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read_sdk(sdk_reader)),
            asyncio.create_task(self._read_stream(self.proc.stdout, "stdout")),
            asyncio.create_task(self._read_stream(self.proc.stderr, "stderr")),
        ]

    async def _next_line(self, reader: asyncio.StreamReader) -> bytes:
        if self.room is not None:
            await self.room()
        return await _readline(reader)

    async def _read_sdk(self, reader: asyncio.StreamReader) -> None:
        while line := await self._next_line(reader):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if not isinstance(doc, dict):
                continue
            if doc.get("kind") == "log":
                self.sink(
                    {
                        "id": str(doc.get("id") or time_ordered_id()),
                        "level": doc.get("level", "Info"),
                        "message": str(doc.get("message", "")),
                        "fields": doc.get("fields") if isinstance(doc.get("fields"), dict) else None,
                        "at": doc.get("at") or now_iso(),
                    }
                )
            elif doc.get("kind") == "screenshot":
                if self.on_screenshot is not None:
                    self.on_screenshot()
            elif doc.get("kind") == "output" and isinstance(doc.get("values"), dict):
                self.output.update(doc["values"])
            elif doc.get("kind") == "request" and isinstance(doc.get("id"), str):
                # Each request is answered on its own: a slow take does not hold up a log line.
                task = asyncio.create_task(self._answer(doc))
                self._requests.add(task)
                task.add_done_callback(self._requests.discard)

    async def _answer(self, doc: dict[str, Any]) -> None:
        if self.on_request is None:
            answer: dict[str, Any] = {
                "error": {
                    "code": "offline",
                    "detail": "this script does not run under a connected robot (run-local)",
                    "field": None,
                }
            }
        else:
            try:
                answer = await self.on_request(self, doc)
            except Exception as exc:  # the robot's bug must not leave the script waiting
                answer = {"error": {"code": "robot_error", "detail": type(exc).__name__, "field": None}}
        self.send_to_script({"kind": "reply", "id": doc["id"], **answer})

    def send_to_script(self, doc: dict[str, Any]) -> bool:
        """One JSON line to the script's reply pipe; False when the script is gone."""
        if self._replies is None or self._replies.is_closing():
            return False
        self._replies.write(json.dumps(doc, separators=(",", ":"), default=str).encode() + b"\n")
        return True

    async def _read_stream(self, reader: asyncio.StreamReader, stream: str) -> None:
        while line := await self._next_line(reader):
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            if not text:
                continue
            if stream == "stderr":
                self._stderr_tail.append(text)
            self.sink(
                {
                    "id": str(time_ordered_id()),
                    "level": "Error" if stream == "stderr" else "Info",
                    "message": text,
                    "fields": {"stream": stream},
                    "at": now_iso(),
                }
            )

    def request_stop(self) -> None:
        """Soft stop: the script's ``sdk.should_stop()`` turns true."""
        self.stop_requested = True
        if self._control_dir is not None:
            self.stop_file.touch()

    async def kill(self) -> None:
        """Hard stop: kill the script and every process it started."""
        self.interrupted = True
        if self.proc is None or self.proc.returncode is not None:
            return
        await asyncio.to_thread(kill_tree, self.proc.pid)

    async def wait(self) -> RunResult:
        assert self.proc is not None
        code = await self.proc.wait()
        # Whatever the script left behind in its process group goes with it.
        await asyncio.to_thread(kill_tree, self.proc.pid, include_root=False)
        _, pending = await asyncio.wait(self._readers, timeout=2)
        for task in pending:
            task.cancel()
        for task in list(self._requests):
            task.cancel()
        if self._replies is not None:
            self._replies.close()
        if self._control_dir is not None:
            shutil.rmtree(self._control_dir, ignore_errors=True)
        if self.interrupted:
            return RunResult("interrupted", self.output, "interrupted by a hard stop", code)
        if code == 0:
            return RunResult("stopped" if self.stop_requested else "successful", self.output, None, code)
        error = next((line for line in reversed(self._stderr_tail) if line.strip()), None)
        return RunResult("failed", self.output, error or f"the script exited with code {code}", code)


async def _readline(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readline()
    except (ValueError, asyncio.LimitOverrunError):
        # A line longer than the limit: skip what is buffered, keep reading.
        with contextlib.suppress(Exception):
            await reader.read(1024 * 1024)
        return b"\n"


def kill_tree(pid: int, *, include_root: bool = True) -> None:
    """SIGKILL ``pid``'s process group and every descendant (also those that left the group)."""
    try:
        root = psutil.Process(pid)
        descendants = root.children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for proc in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    if include_root:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    psutil.wait_procs(descendants, timeout=3)
