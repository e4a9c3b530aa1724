"""What scripts ask the orchestrator through their robot: tasks, resources, credentials.

A script's SDK call arrives as a request line on its pipe (``runner.ScriptRun``); ``Requests``
turns it into a protocol frame, sends it, waits for the gateway's reply and answers the script on
its reply pipe (docs/robot-protocol.md 2.12 to 2.14):

- reliable frames (``task.add``, ``task.progress``, ``task.finish``, ``resource.set``) go through
  the journal like job reports: a finish made while the gateway is away is delivered after the
  reconnect, once. The script waits for the answer up to its ``timeout``, then hears ``offline``
  (the frame stays journaled);
- requests (``task.take``, ``task.renew``, ``resource.get``, ``credential.get``) are sent only
  while connected: the call waits for a connection up to its ``timeout``, then hears ``offline``;
  a connection lost before the answer is answered ``offline`` at once;
- a task taken is **held**: its lock is renewed here (at a third of its time) until the script
  finishes it or ends; a renewal refused (``stale_token``) forgets it;
- a watched resource: the robot forwards ``resource.changed`` to the scripts watching it, and asks
  again after each reconnect (a new connection has no watches), telling them what changed.

A password travels from the gateway's frame to the script's pipe and nowhere else: never logged,
never journaled (``credential.get`` is a request).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from rpa_protocol import (
    CredentialGet,
    CredentialValue,
    Error,
    JobRequest,
    JobRequested,
    ReliableFrame,
    ReplyError,
    ResourceChanged,
    ResourceGet,
    ResourceSet,
    ResourceValue,
    TaskAdd,
    TaskAdded,
    TaskFinish,
    TaskFinished,
    TaskItem,
    TaskProgress,
    TaskProgressed,
    TaskRenew,
    TaskRenewed,
    TaskTake,
    TaskTaken,
    encode,
)

if TYPE_CHECKING:
    from rpa_robot.client import RobotClient
    from rpa_robot.runner import ScriptRun

REPLIES = (
    TaskAdded,
    TaskTaken,
    TaskRenewed,
    TaskProgressed,
    TaskFinished,
    ResourceValue,
    CredentialValue,
    JobRequested,
)
Reply = TaskAdded | TaskTaken | TaskRenewed | TaskProgressed | TaskFinished | ResourceValue | CredentialValue
MAX_TIMEOUT_S = 600.0
RENEW_TICK_S = 1.0
_REPLY_META = {"type", "seq", "request_id", "error", "duplicate"}


@dataclass
class Held:
    """A task this robot took for a script: its lock is renewed until it is finished."""

    task_id: uuid.UUID
    token: int
    run: ScriptRun
    lock_s: int | None
    renew_at: float  # monotonic
    renewing: bool = False


@dataclass
class Watch:
    name: str
    runs: dict[int, ScriptRun] = field(default_factory=dict)  # by id(): a ScriptRun is not hashable
    last: dict[str, Any] | None = None


def _error(code: str, detail: str, where: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "detail": detail, "field": where}}


def _invalid(exc: ValidationError) -> dict[str, Any]:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or None
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return _error("invalid", f"{where}: {msg}" if where else msg, where)


def _result(frame: BaseModel) -> dict[str, Any]:
    return frame.model_dump(mode="json", exclude=_REPLY_META)


class Requests:
    def __init__(self, client: RobotClient) -> None:
        self.client = client
        self.waiting: dict[uuid.UUID, asyncio.Future[Any]] = {}
        self.request_seqs: dict[int, uuid.UUID] = {}  # frames not journaled: seq -> request id
        self.reliable_seqs: dict[int, uuid.UUID] = {}
        self.held: dict[uuid.UUID, Held] = {}
        self.watches: dict[str, Watch] = {}
        self.connected = asyncio.Event()
        self.clock_offset = timedelta(0)  # gateway time - our time, from ``welcome``
        self._background: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # Connection events ---------------------------------------------------------------------------

    def on_connected(self, server_time: datetime) -> None:
        self.clock_offset = server_time - datetime.now(UTC)
        self.connected.set()

    def on_disconnected(self) -> None:
        self.connected.clear()
        # A request's answer is lost with its connection: tell the script now rather than at its
        # timeout (a task taken meanwhile stays locked to this robot until its lock expires).
        for seq, request_id in list(self.request_seqs.items()):
            fut = self.waiting.pop(request_id, None)
            if fut is not None and not fut.done():
                fut.set_result(_error("offline", "the connection to the orchestrator was lost"))
            del self.request_seqs[seq]
        for held in self.held.values():
            held.renewing = False

    async def after_welcome(self) -> None:
        """A new connection has no watches: ask again for every watched resource."""
        for key, watch in list(self.watches.items()):
            if not watch.runs:
                del self.watches[key]
                continue
            self._spawn(self._rewatch(watch))

    async def _rewatch(self, watch: Watch) -> None:
        answer = await self._request(
            lambda seq, rid: ResourceGet(seq=seq, request_id=rid, name=watch.name, watch=True), 30.0
        )
        result = answer.get("result")
        if isinstance(result, dict):
            self._forward(watch, result)

    def _forward(self, watch: Watch, resource: dict[str, Any]) -> None:
        doc = {**resource, "name": watch.name}
        if doc == watch.last:
            return
        watch.last = doc
        for key, run in list(watch.runs.items()):
            if not run.send_to_script({"kind": "changed", "resource": doc}):
                watch.runs.pop(key, None)

    def run_ended(self, run: ScriptRun) -> None:
        """The script is gone: its tasks are no longer renewed (their locks run out), its watches end."""
        for task_id in [t for t, h in self.held.items() if h.run is run]:
            del self.held[task_id]
        for watch in self.watches.values():
            watch.runs.pop(id(run), None)

    # Gateway frames --------------------------------------------------------------------------------

    def on_frame(self, frame: Any) -> bool:
        """Handle a reply, a push or an error about one of ours; False when the frame is not ours."""
        if isinstance(frame, REPLIES):
            self.request_seqs.pop(frame.seq, None)
            self.reliable_seqs.pop(frame.seq, None)
            fut = self.waiting.pop(frame.request_id, None)
            if fut is not None and not fut.done():
                fut.set_result(frame)
            return True
        if isinstance(frame, ResourceChanged):
            watch = self.watches.get(frame.name.casefold())
            if watch is not None:
                if frame.error is not None:
                    self._forward(watch, {"name": frame.name, "kind": None, "error": frame.error.code})
                else:
                    self._forward(watch, _result(frame))
            return True
        if isinstance(frame, Error) and frame.seq > 0:
            request_id = self.request_seqs.pop(frame.seq, None) or self.reliable_seqs.pop(frame.seq, None)
            fut = self.waiting.pop(request_id, None) if request_id else None
            if fut is not None and not fut.done():
                fut.set_result(ReplyError(code=frame.code, detail=frame.detail, field=frame.field))
        return False

    # Sending -----------------------------------------------------------------------------------------

    async def _request(self, make: Callable[[int, uuid.UUID], BaseModel], wait_s: float) -> dict[str, Any]:
        """Send a request frame when connected; its reply (or an error) as the script's answer."""
        timeout = wait_s
        request_id = uuid.uuid4()
        try:
            make(1, request_id)  # validate before waiting for anything
        except ValidationError as exc:
            return _invalid(exc)
        end = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can swallow a cancellation
                await self.connected.wait()
        except TimeoutError:
            return _error("offline", f"not connected to the orchestrator within {timeout:g} s")
        ws = self.client.ws
        if ws is None:
            return _error("offline", "not connected to the orchestrator")
        seq = self.client.journal.reserve()
        frame = make(seq, request_id)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = fut
        self.request_seqs[seq] = request_id
        try:
            await ws.send(encode(frame))
            return self._answer(await asyncio.wait_for(fut, max(0.1, end - time.monotonic())))
        except TimeoutError:
            return _error("timeout", f"no answer from the orchestrator within {timeout:g} s")
        except Exception as exc:  # the socket closed under the send
            return _error("offline", f"the connection to the orchestrator was lost ({type(exc).__name__})")
        finally:
            self.waiting.pop(request_id, None)
            self.request_seqs.pop(seq, None)

    async def _reliable(
        self, make: Callable[[int, uuid.UUID], ReliableFrame], wait_s: float
    ) -> dict[str, Any]:
        """Journal a reliable frame, then wait for its reply up to ``wait_s``."""
        timeout = wait_s
        request_id = uuid.uuid4()
        try:
            checked = make(1, request_id)
        except ValidationError as exc:
            return _invalid(exc)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = fut
        seq = self.client.emit(lambda n: checked.model_copy(update={"seq": n}))
        self.reliable_seqs[seq] = request_id
        try:
            return self._answer(await asyncio.wait_for(fut, timeout))
        except TimeoutError:
            where = "no answer" if self.connected.is_set() else "not connected"
            return _error(
                "offline",
                f"{where} within {timeout:g} s; the request is journaled and will be delivered when "
                "the robot reaches the orchestrator",
            )
        finally:
            self.waiting.pop(request_id, None)

    def _answer(self, reply: Any) -> dict[str, Any]:
        if isinstance(reply, dict):
            return reply
        if isinstance(reply, ReplyError):
            return _error(reply.code, reply.detail, reply.field)
        if isinstance(reply, JobRequested):
            if reply.job_id is None:
                return _error("not_started", reply.error or "no job was created")
            return {"result": {"job_id": str(reply.job_id)}}
        if reply.error is not None:
            return _error(reply.error.code, reply.error.detail, reply.error.field)
        return {"result": _result(reply)}

    # Script requests ------------------------------------------------------------------------------

    async def handle(self, run: ScriptRun, doc: dict[str, Any]) -> dict[str, Any]:
        """Answer one SDK request (see ``runner.RequestHandler``)."""
        op = doc.get("op")
        args = doc.get("args") if isinstance(doc.get("args"), dict) else {}
        try:
            timeout = min(MAX_TIMEOUT_S, max(0.5, float(doc.get("timeout") or 30.0)))
        except (TypeError, ValueError):
            timeout = 30.0
        job_id = uuid.UUID(run.job_id) if run.job_id else None
        a: dict[str, Any] = dict(args or {})
        if op == "task.add":
            try:
                items = [TaskItem.model_validate(t) for t in a.get("tasks") or []]
            except ValidationError as exc:
                return _invalid(exc)
            return await self._reliable(
                lambda seq, rid: TaskAdd(
                    seq=seq, request_id=rid, queue=a.get("queue"), tasks=items, job_id=job_id
                ),
                timeout,
            )
        if op == "task.take":
            answer = await self._request(
                lambda seq, rid: TaskTake(
                    seq=seq, request_id=rid, queue=a.get("queue"), job_id=job_id, lock_s=a.get("lock_s")
                ),
                timeout,
            )
            self._hold(run, answer, a.get("lock_s"))
            return answer
        if op == "task.finish":
            task_id = _uuid(a.get("task_id"))
            self._release(task_id)
            return await self._reliable(
                lambda seq, rid: TaskFinish(
                    seq=seq,
                    request_id=rid,
                    task_id=a.get("task_id"),
                    lock_token=a.get("lock_token"),
                    outcome=a.get("outcome"),
                    reason=a.get("reason"),
                    output=a.get("output"),
                ),
                timeout,
            )
        if op == "task.progress":
            return await self._reliable(
                lambda seq, rid: TaskProgress(
                    seq=seq,
                    request_id=rid,
                    task_id=a.get("task_id"),
                    lock_token=a.get("lock_token"),
                    note=a.get("note"),
                ),
                timeout,
            )
        if op == "resource.get":
            watch = bool(a.get("watch"))
            name = a.get("name")
            answer = await self._request(
                lambda seq, rid: ResourceGet(seq=seq, request_id=rid, name=name, watch=watch), timeout
            )
            if watch and isinstance(name, str) and ("result" in answer or _code(answer) != "invalid"):
                w = self.watches.setdefault(name.casefold(), Watch(name))
                w.runs[id(run)] = run
                if "result" in answer:
                    w.last = {**answer["result"], "name": w.name}
            return answer
        if op == "resource.set":
            return await self._reliable(
                lambda seq, rid: ResourceSet(
                    seq=seq, request_id=rid, name=a.get("name"), value=a.get("value")
                ),
                timeout,
            )
        if op == "credential.get":
            return await self._request(
                lambda seq, rid: CredentialGet(seq=seq, request_id=rid, name=a.get("name")), timeout
            )
        if op == "job.request":
            # A robot command trigger (or a process) started by the script: reliable, like job reports.
            return await self._reliable(
                lambda seq, rid: JobRequest(
                    seq=seq,
                    request_id=rid,
                    trigger_name=a.get("trigger"),
                    process_name=a.get("process"),
                    input_args=a.get("input_args") or {},
                ),
                timeout,
            )
        return _error("invalid", f"unknown request {op!r}", "op")

    # Held tasks and their locks -----------------------------------------------------------------

    def _hold(self, run: ScriptRun, answer: dict[str, Any], lock_s: Any) -> None:
        task = (answer.get("result") or {}).get("task")
        if not isinstance(task, dict):
            return
        task_id = uuid.UUID(str(task["id"]))
        expires = datetime.fromisoformat(str(task["lock_expires_at"]))
        self.held[task_id] = Held(
            task_id, int(task["lock_token"]), run, lock_s if isinstance(lock_s, int) else None, 0.0
        )
        self.held[task_id].renew_at = self._renew_at(expires)

    def _renew_at(self, expires: datetime) -> float:
        """When to renew a lock that expires at ``expires`` (gateway time): a third of the way."""
        remaining = (expires - (datetime.now(UTC) + self.clock_offset)).total_seconds()
        return time.monotonic() + max(RENEW_TICK_S, remaining / 3)

    def _release(self, task_id: uuid.UUID | None) -> None:
        if task_id is not None:
            self.held.pop(task_id, None)

    async def renew_loop(self) -> None:
        """While connected: renew every held lock that is due (one task per renewal in flight)."""
        while True:
            await asyncio.sleep(RENEW_TICK_S)
            now = time.monotonic()
            for held in list(self.held.values()):
                if not held.renewing and held.renew_at <= now:
                    held.renewing = True
                    self._spawn(self._renew(held))

    async def _renew(self, held: Held) -> None:
        try:
            answer = await self._request(
                lambda seq, rid: TaskRenew(
                    seq=seq, request_id=rid, task_id=held.task_id, lock_token=held.token, lock_s=held.lock_s
                ),
                15.0,
            )
        finally:
            held.renewing = False
        if self.held.get(held.task_id) is not held:
            return  # finished meanwhile
        result = answer.get("result")
        if isinstance(result, dict) and result.get("lock_expires_at"):
            held.renew_at = self._renew_at(datetime.fromisoformat(str(result["lock_expires_at"])))
        elif _code(answer) in ("stale_token", "not_in_progress", "task_not_found"):
            # The lock is gone (expired and taken by another robot, or ended by a person): the
            # script's finish will be refused with the same code.
            del self.held[held.task_id]
        else:
            held.renew_at = time.monotonic() + RENEW_TICK_S  # offline or slow: try again soon


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _code(answer: dict[str, Any]) -> str | None:
    err = answer.get("error")
    return str(err.get("code")) if isinstance(err, dict) else None
