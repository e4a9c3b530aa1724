"""The script SDK: what a process's script uses to talk to the robot running it.

    from rpa_robot import sdk

    args = sdk.input_args()
    sdk.log("working", level="Info", item=3)
    if sdk.should_stop():
        ...
    sdk.set_output(total=42)

    task = sdk.take_task("invoices")            # None when the queue has nothing waiting
    login = sdk.get_credential("erp")           # .login, .password (never printed by repr)
    sdk.finish_task(task, "successful", output={"total": 42})

    shot = sdk.screenshot()                     # the robot's desktop, PNG, uploaded by the robot
    sdk.screenshot(message_id=sdk.log("invoice form rejected", level="Error"))  # attached to a line

The robot passes the channel through the environment: ``RPA_INPUT_FILE`` (the input arguments as a
JSON file, never the command line), ``RPA_SDK_FD`` (a pipe the SDK writes JSON lines to: logs,
output, requests), ``RPA_SDK_REPLY_FD`` (a pipe the robot answers requests on, and pushes watched
resources on), ``RPA_STOP_FILE`` (appears when a soft stop is requested), ``RPA_SCREENSHOT_DIR``
(the robot's screenshot spool). Run outside a robot, the
SDK still works for logs (stderr) and input (none); requests raise ``Offline``.

Requests (tasks, resources, credentials) are thread-safe: any thread may call them; each waits for
its own answer, and a reader thread hands answers out by request id. Each has a ``timeout``: the
robot answers within it (with ``Offline`` when it could not reach the orchestrator in time), so no
call waits forever. The lock of a task taken here is renewed by the robot while the script works,
until ``finish_task`` (or the end of the script).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from rpa_robot.ids import time_ordered_id

LEVELS = ("Debug", "Info", "Warning", "Error", "Critical")

_lock = threading.Lock()
_channel: TextIO | None = None
_channel_opened = False
_output: dict[str, Any] = {}


def _open_channel() -> TextIO | None:
    global _channel, _channel_opened
    if not _channel_opened:
        _channel_opened = True
        fd = os.environ.get("RPA_SDK_FD")
        if fd and fd.isdigit():
            try:
                _channel = os.fdopen(int(fd), "w", buffering=1, encoding="utf-8")
            except OSError:
                _channel = None
    return _channel


def _write(doc: dict[str, Any]) -> bool:
    line = json.dumps(doc, separators=(",", ":"), default=str)
    with _lock:
        channel = _open_channel()
        if channel is None:
            return False
        channel.write(line + "\n")
        channel.flush()
        return True


def input_args() -> dict[str, Any]:
    """The job's input arguments (an empty dict when there are none)."""
    path = os.environ.get("RPA_INPUT_FILE")
    if not path:
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


def log(message: str, level: str = "Info", **fields: Any) -> str:
    """Log one line for the orchestrator; returns its id (made here, so a replay is never doubled)."""
    normalized = level.capitalize()
    if normalized not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}")
    entry_id = str(time_ordered_id())
    doc = {
        "kind": "log",
        "id": entry_id,
        "level": normalized,
        "message": str(message),
        "fields": fields or None,
        "at": datetime.now(UTC).isoformat(),
    }
    if not _write(doc):
        extra = f" {json.dumps(fields, default=str)}" if fields else ""
        print(f"[{normalized}] {message}{extra}", file=sys.stderr, flush=True)
    return entry_id


def screenshot(message_id: str | None = None) -> str:
    """Capture the robot's whole desktop (every monitor) as PNG; returns the screenshot's id.

    The image goes to the robot's spool on disk and the robot uploads it, attached to this job and,
    with ``message_id`` (the id ``log()`` returned), to that log line. The robot keeps retrying while
    the orchestrator is unreachable, so the screenshot is not lost. Run outside a robot, the PNG is
    saved in the current directory instead. Raises ``SdkError("no_display")`` when there is no
    desktop to capture (no display)."""
    from rpa_robot import screenshots

    try:
        png = screenshots.capture_png()
    except screenshots.CaptureError as exc:
        raise SdkError("no_display", str(exc)) from None
    shot_id = str(uuid.uuid4())
    directory = screenshots.spool_dir_from_env()
    if directory is None:
        path = os.path.abspath(f"screenshot-{shot_id}.png")
        with open(path, "wb") as f:
            f.write(png)
        screenshots.print_saved(Path(path))
        return shot_id
    screenshots.spool(directory, png, job_id=job_id(), message_id=message_id, shot_id=shot_id)
    _write({"kind": "screenshot", "id": shot_id})  # wakes the robot's uploader
    return shot_id


def should_stop() -> bool:
    """True once a soft stop was requested: finish the current step and return."""
    path = os.environ.get("RPA_STOP_FILE")
    return path is not None and path != "" and os.path.exists(path)


def set_output(**values: Any) -> None:
    """Set output arguments (merged with those set before); they must be JSON values."""
    json.dumps(values)  # refuse what cannot travel, here, where the script author sees it
    _output.update(values)
    _write({"kind": "output", "values": values})


def job_id() -> str | None:
    """The id of the job this script runs for (None when run locally)."""
    return os.environ.get("RPA_JOB_ID") or None


# Requests: tasks, resources, credentials ------------------------------------------------------------

OUTCOMES = ("successful", "failed_application", "failed_business")
PRIORITIES = ("low", "normal", "high")
_GRACE_S = 10.0
"""How much longer than its ``timeout`` a call waits for the robot itself (a robot that died)."""


class SdkError(Exception):
    """A request the orchestrator (or the robot) refused: ``code``, ``detail``, ``field``."""

    def __init__(self, code: str, detail: str, field: str | None = None) -> None:
        super().__init__(f"{code}: {detail}" + (f" ({field})" if field else ""))
        self.code = code
        self.detail = detail
        self.field = field


class TaskError(SdkError):
    """A task request was refused: ``queue_not_found``, ``stale_token`` (the lock was lost),
    ``not_in_progress``, ``duplicate_name``, ``too_many``, ``invalid``..."""


class ResourceError(SdkError):
    """A resource or credential request was refused: ``resource_not_found``, ``not_allowed`` (no
    value for this robot), ``wrong_kind``, ``invalid``, ``unreadable``..."""


class Offline(SdkError):
    """No answer in time: the robot is not connected (``offline``) or did not answer (``timeout``).

    A ``finish_task`` / ``add_task`` that raised this is journaled by the robot and still delivered
    when it reconnects (a finish whose lock was lost meanwhile is then refused)."""


@dataclass(frozen=True)
class Task:
    """A task taken from a queue. Its lock is this robot's until ``finish_task``."""

    id: str
    queue: str
    name: str
    description: str
    parameters: dict[str, Any]
    priority: str
    tags: list[str]
    deadline: str | None
    retry_number: int
    lock_token: int
    lock_expires_at: str


@dataclass(frozen=True)
class Resource:
    """A resource as this robot sees it (its own value, else its group's, else everyone's)."""

    name: str
    kind: str
    text: str | None = None
    login: str | None = None
    expires_at: str | None = None
    expired: bool = False
    calendar: dict[str, Any] | None = None


@dataclass(frozen=True)
class Credential:
    """A login and its password. The password is left out of ``repr``: printing the object, or an
    exception showing it, does not leak it."""

    name: str
    login: str | None
    password: str | None = field(repr=False)
    expires_at: str | None = None
    expired: bool = False


class _Channel:
    """Requests out on the SDK pipe, answers in on the reply pipe, matched by id."""

    def __init__(self, replies: BinaryIO) -> None:
        self._replies = replies
        self._cond = threading.Condition()
        self._answers: dict[str, dict[str, Any]] = {}
        self._closed = False
        self.watchers: dict[str, list[Callable[[Resource], None]]] = {}
        self.watched: dict[str, Resource] = {}
        threading.Thread(target=self._read, name="rpa-sdk-replies", daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self._replies:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(doc, dict):
                    continue
                if doc.get("kind") == "reply":
                    with self._cond:
                        self._answers[str(doc.get("id"))] = doc
                        self._cond.notify_all()
                elif doc.get("kind") == "changed" and isinstance(doc.get("resource"), dict):
                    self._changed(doc["resource"])
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def _changed(self, doc: dict[str, Any]) -> None:
        resource = _resource(doc)
        key = resource.name.casefold()
        self.watched[key] = resource
        for callback in list(self.watchers.get(key, ())):
            with contextlib.suppress(Exception):  # a script's callback must not stop the reader
                callback(resource)

    def call(self, op: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        request_id = str(uuid.uuid4())
        if not _write({"kind": "request", "id": request_id, "op": op, "args": args, "timeout": timeout}):
            raise Offline("offline", "this script does not run under a robot")
        deadline = timeout + _GRACE_S
        with self._cond:
            self._cond.wait_for(lambda: request_id in self._answers or self._closed, deadline)
            doc = self._answers.pop(request_id, None)
            closed = self._closed
        if doc is None and closed:
            raise Offline("offline", "the robot closed the reply channel")
        if doc is None:
            raise Offline("timeout", f"the robot did not answer {op!r} within {deadline:g} s")
        return doc


_channel_lock = threading.Lock()
_requests: _Channel | None = None


def _request_channel() -> _Channel:
    global _requests
    with _channel_lock:
        if _requests is None:
            fd = os.environ.get("RPA_SDK_REPLY_FD")
            if not fd or not fd.isdigit() or _open_channel_locked() is None:
                raise Offline("offline", "this script does not run under a robot (no RPA_SDK_REPLY_FD)")
            try:
                replies = os.fdopen(int(fd), "rb")
            except OSError as exc:
                raise Offline("offline", f"the robot's reply channel cannot be opened: {exc}") from None
            _requests = _Channel(replies)
        return _requests


def _open_channel_locked() -> TextIO | None:
    with _lock:
        return _open_channel()


def _call(op: str, args: dict[str, Any], timeout: float, error: type[SdkError]) -> dict[str, Any]:
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    doc = _request_channel().call(op, args, timeout)
    err = doc.get("error")
    if isinstance(err, dict):
        code = str(err.get("code") or "error")
        kind = Offline if code in ("offline", "timeout") else error
        raise kind(code, str(err.get("detail") or ""), err.get("field"))
    result = doc.get("result")
    return result if isinstance(result, dict) else {}


class JobError(SdkError):
    """A job request was refused: ``not_started`` (its detail says why: no such trigger for this
    robot, a disabled trigger, no published version...), ``invalid``."""


def start_trigger(name: str, input_args: dict[str, Any] | None = None, /, *, timeout: float = 30.0) -> str:
    """Fire the robot command trigger ``name``: the trigger decides the process, the robot(s), the
    priority and the arguments; ``input_args`` (a dict) go over its own. Returns the new job's id.

    The request is journaled by the robot: sent once even across a reconnect (``Offline`` when no
    answer came in time; the job may still be created when the robot reconnects)."""
    result = _call("job.request", {"trigger": name, "input_args": dict(input_args or {})}, timeout, JobError)
    return str(result["job_id"])


def _when(value: datetime | str | None, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime or an ISO 8601 string")
    if value.tzinfo is None:
        raise ValueError(f"{name} must carry a time zone (datetime.now(UTC))")
    return value.isoformat()


def _task_item(item: Mapping[str, Any]) -> dict[str, Any]:
    doc = dict(item)
    if "name" not in doc:
        raise ValueError("a task needs a name")
    priority = doc.get("priority", "normal")
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}")
    for key in ("deadline", "delay_until"):
        if key in doc:
            doc[key] = _when(doc[key], key)
    json.dumps(doc)  # refuse what cannot travel, here, where the script author sees it
    return doc


def add_tasks(queue: str, tasks: Iterable[Mapping[str, Any]], *, timeout: float = 60.0) -> list[str]:
    """Add many tasks to ``queue`` in one request (each a dict: ``name``, ``parameters``,
    ``priority``, ``tags``, ``deadline``, ``delay_until``, ``description``); their ids, in order.

    Journaled by the robot: added exactly once even across a reconnect. An empty list comes back
    when the robot had to replay the request (its first answer was lost with the connection)."""
    items = [_task_item(t) for t in tasks]
    result = _call("task.add", {"queue": queue, "tasks": items}, timeout, TaskError)
    return [str(t) for t in result.get("task_ids", [])]


def add_task(
    queue: str,
    name: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    priority: str = "normal",
    tags: Iterable[str] = (),
    deadline: datetime | str | None = None,
    delay_until: datetime | str | None = None,
    description: str = "",
    timeout: float = 60.0,
) -> str | None:
    """Add one task to ``queue``; its id (None when the answer was lost and the request replayed)."""
    item = {
        "name": name,
        "parameters": dict(parameters or {}),
        "priority": priority,
        "tags": list(tags),
        "deadline": deadline,
        "delay_until": delay_until,
        "description": description,
    }
    ids = add_tasks(queue, [item], timeout=timeout)
    return ids[0] if ids else None


def take_task(queue: str, *, lock_s: int | None = None, timeout: float = 30.0) -> Task | None:
    """The next task of ``queue`` (overdue first, then priority, then age), locked to this robot;
    None when nothing is waiting. The robot renews the lock until ``finish_task``."""
    args: dict[str, Any] = {"queue": queue}
    if lock_s is not None:
        args["lock_s"] = lock_s
    result = _call("task.take", args, timeout, TaskError)
    doc = result.get("task")
    if not isinstance(doc, dict):
        return None
    return Task(
        id=str(doc["id"]),
        queue=str(doc.get("queue", queue)),
        name=str(doc.get("name", "")),
        description=str(doc.get("description") or ""),
        parameters=dict(doc.get("parameters") or {}),
        priority=str(doc.get("priority", "normal")),
        tags=list(doc.get("tags") or []),
        deadline=doc.get("deadline"),
        retry_number=int(doc.get("retry_number") or 0),
        lock_token=int(doc["lock_token"]),
        lock_expires_at=str(doc.get("lock_expires_at")),
    )


def finish_task(
    task: Task,
    outcome: str = "successful",
    reason: str | None = None,
    output: Mapping[str, Any] | None = None,
    *,
    timeout: float = 60.0,
) -> str | None:
    """End ``task``: ``successful``, ``failed_application`` or ``failed_business``, with a reason
    and output; returns the id of the retry the queue made, if any. ``TaskError("stale_token")``
    when the lock was lost (the task went to another robot)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
    out = dict(output) if output is not None else None
    json.dumps(out)
    args = {
        "task_id": task.id,
        "lock_token": task.lock_token,
        "outcome": outcome,
        "reason": reason,
        "output": out,
    }
    result = _call("task.finish", args, timeout, TaskError)
    retry = result.get("retry_task_id")
    return str(retry) if retry else None


def task_progress(task: Task, note: str, *, timeout: float = 30.0) -> None:
    """A progress note on ``task`` (journaled by the robot, stored once)."""
    _call(
        "task.progress", {"task_id": task.id, "lock_token": task.lock_token, "note": note}, timeout, TaskError
    )


def _resource(doc: Mapping[str, Any]) -> Resource:
    return Resource(
        name=str(doc.get("name", "")),
        kind=str(doc.get("kind") or ""),
        text=doc.get("text"),
        login=doc.get("login"),
        expires_at=doc.get("expires_at"),
        expired=bool(doc.get("expired")),
        calendar=doc.get("calendar"),
    )


def get_resource(
    name: str,
    watch: bool = False,
    *,
    on_change: Callable[[Resource], None] | None = None,
    timeout: float = 30.0,
) -> Resource:
    """A resource as this robot sees it. ``watch``: the robot is told when it changes; the latest
    value is then ``watched(name)``, and ``on_change`` (if given) is called with it, from the SDK's
    reader thread."""
    channel = _request_channel()
    if on_change is not None:
        watch = True
        channel.watchers.setdefault(name.casefold(), []).append(on_change)
    resource = _resource(_call("resource.get", {"name": name, "watch": watch}, timeout, ResourceError))
    if watch:
        channel.watched.setdefault(name.casefold(), resource)
    return resource


def watched(name: str) -> Resource | None:
    """The latest value of a resource watched with ``get_resource(name, watch=True)``."""
    return _request_channel().watched.get(name.casefold())


def set_resource(name: str, value: str, *, timeout: float = 30.0) -> Resource:
    """Set a Text resource (the value this robot sees; never a broader scope). Journaled."""
    if not isinstance(value, str):
        raise TypeError("a Text resource's value is a string")
    return _resource(_call("resource.set", {"name": name, "value": value}, timeout, ResourceError))


def get_credential(name: str, *, timeout: float = 30.0) -> Credential:
    """A Credentials resource's login and password (each read is audited by the orchestrator).

    Keep the password in memory only: not in a log line, an output, a file or a command line."""
    result = _call("credential.get", {"name": name}, timeout, ResourceError)
    return Credential(
        name=str(result.get("name", name)),
        login=result.get("login"),
        password=result.get("password"),
        expires_at=result.get("expires_at"),
        expired=bool(result.get("expired")),
    )
