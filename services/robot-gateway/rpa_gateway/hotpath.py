"""The task lifecycle's hot path, applied for a whole batch at once: a few statements per batch, not
per frame.

The group commit already shares one transaction among the frames of all connections; here the
frames that dominate a robot's day share their statements too:

- ``claim_seqs``: the ``inbound_seq`` guards of every reliable frame of the batch: one ``SELECT ...
  FOR UPDATE`` of the robot rows (in id order, the lock order) and one ``UPDATE`` (a ``CASE`` per
  robot), instead of an ``UPDATE`` per frame;
- ``take_many``: every ``task.take`` of one queue in the batch: the best free tasks, as many as there
  are takers, in one ``SELECT ... FOR UPDATE SKIP LOCKED`` (a second one only when fewer overdue
  tasks than takers are free), given out in the order ``taskflow.take_next`` gives them (overdue
  first, then priority, then age) by one ``UPDATE``;
- ``finish_many``: every Successful ``task.finish``: their rows read under lock in one ``SELECT``,
  the guard of ``taskflow.finish`` checked here (In Progress, same token, same robot, lock not
  expired), the passing ones ended by one ``UPDATE``;
- the history entries (``task_event``) of all of them: one multi-row ``INSERT``.

What is not the common case goes through ``rpa_common.taskflow`` one frame at a time, so its rules
stay in one place: a take that finds fewer free tasks than takers (``take_next`` also releases due
Postponed tasks), a finish that fails the guard (``finish`` tells a replay from a stale token and
says why), a finish as Failed (its retries). Core statements on the tables, no ORM objects: the
gateway's CPU per lifecycle is what the benchmark's goal is about.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common import taskflow
from rpa_common.db.engine import dialect_of
from rpa_common.models import Queue, Robot, Task, TaskEvent
from rpa_common.models.base import utcnow
from rpa_common.models.enums import ActorType, TaskEventKind, TaskState

S = TaskState
_task = cast(sa.Table, Task.__table__)
_event = cast(sa.Table, TaskEvent.__table__)
_robot = cast(sa.Table, Robot.__table__)

TAKEN_COLUMNS = (
    _task.c.id,
    _task.c.name,
    _task.c.description,
    _task.c.parameters,
    _task.c.priority,
    _task.c.tags,
    _task.c.deadline,
    _task.c.retry_number,
    _task.c.lock_token,
)


def _by_id(key: sa.Column[Any], target: sa.Column[Any], values: dict[Any, Any], else_: Any = None) -> Any:
    """``CASE key WHEN id THEN value ...``, each value bound with ``target``'s type (a bare Python
    value would be typed by its class: a datetime as one without time zone)."""
    fallback = else_ if else_ is not None else sa.null()
    if not values:
        return fallback
    whens = [(key == k, sa.bindparam(None, v, type_=target.type)) for k, v in values.items()]
    return sa.case(*whens, else_=fallback)


@dataclass(frozen=True)
class Take:
    robot_id: uuid.UUID
    job_id: uuid.UUID | None
    lock_s: int | None


@dataclass(frozen=True)
class Taken:
    """A task given by ``take_many``: what ``task.taken`` tells the robot."""

    id: uuid.UUID
    name: str
    description: str
    parameters: dict[str, Any]
    priority: int
    tags: list[Any]
    deadline: datetime | None
    retry_number: int
    lock_token: int
    lock_expires_at: datetime


@dataclass(frozen=True)
class Finish:
    account_id: uuid.UUID
    robot_id: uuid.UUID
    task_id: uuid.UUID
    token: int
    reason: str | None
    output: dict[str, Any] | None


class Events:
    """History entries of a batch, inserted together (``flush``) before the commit."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def state(
        self, account_id: uuid.UUID, task_id: uuid.UUID, robot_id: uuid.UUID, at: datetime, to: TaskState,
        note: str | None,
    ) -> None:  # fmt: skip
        self.rows.append(
            {
                "id": uuid.uuid4(),
                "account_id": account_id,
                "task_id": task_id,
                "at": at,
                "kind": TaskEventKind.STATE,
                "from_state": S.IN_PROGRESS if to != S.IN_PROGRESS else S.CREATED,
                "to_state": to,
                "actor_type": ActorType.ROBOT,
                "actor_id": robot_id,
                "note": None if note is None else note[: taskflow.TEXT_MAX],
                "related_task_id": None,
            }
        )

    async def flush(self, session: AsyncSession) -> None:
        if not self.rows:
            return
        rows, self.rows = self.rows, []
        if dialect_of(session) != "postgresql":
            await session.execute(sa.insert(_event), rows)
            return
        # One statement text whatever the number of rows (arrays, not a VALUES list per size): one
        # compiled and prepared statement for every batch.
        await session.execute(
            _PG_EVENTS,
            {
                "ids": [r["id"] for r in rows],
                "accounts": [r["account_id"] for r in rows],
                "tasks": [r["task_id"] for r in rows],
                "ats": [r["at"] for r in rows],
                "froms": [r["from_state"].value for r in rows],
                "tos": [r["to_state"].value for r in rows],
                "actors": [r["actor_id"] for r in rows],
                "notes": [r["note"] for r in rows],
            },
        )


async def claim_seqs(
    session: AsyncSession, frames: list[tuple[uuid.UUID, int]]
) -> set[tuple[uuid.UUID, int]]:
    """The (robot, seq) of these reliable frames that are new, now recorded as applied.

    Frames of one robot are given in the order they arrived; a seq at or below what the robot's
    row (or an earlier frame of the list) says is a replay."""
    if not frames:
        return set()
    if dialect_of(session) == "postgresql" and len({r for r, _ in frames}) == len(frames):
        # One robot, one frame (the rule: a connection has one frame in flight): one statement.
        ordered = sorted(frames)  # rows locked in id order, the order every writer locks robots in
        claimed = await session.execute(
            _PG_CLAIM, {"ids": [r for r, _ in ordered], "seqs": [q for _, q in ordered]}
        )
        mine = {row[0] for row in claimed}
        return {(r, q) for r, q in frames if r in mine}
    robot_ids = sorted({r for r, _ in frames})
    current = {
        row.id: int(row.inbound_seq or 0)
        for row in await session.execute(
            sa.select(_robot.c.id, _robot.c.inbound_seq)
            .where(_robot.c.id.in_(robot_ids))
            .order_by(_robot.c.id)
            .with_for_update()
        )
    }
    fresh: set[tuple[uuid.UUID, int]] = set()
    moved: dict[uuid.UUID, int] = {}
    for robot_id, seq in frames:
        if robot_id in current and seq > current[robot_id]:
            current[robot_id] = seq
            moved[robot_id] = seq
            fresh.add((robot_id, seq))
    if moved:
        await session.execute(
            sa.update(_robot)
            .where(_robot.c.id.in_(list(moved)))
            .values(inbound_seq=_by_id(_robot.c.id, _robot.c.inbound_seq, moved, _robot.c.inbound_seq))
        )
    return fresh


def _free(queue_id: uuid.UUID, limit: int, overdue: bool, now: datetime) -> sa.Select[Any]:
    stmt = sa.select(*TAKEN_COLUMNS).where(_task.c.queue_id == queue_id, _task.c.state == S.CREATED)
    if overdue:
        stmt = stmt.where(_task.c.deadline < now)
    else:
        stmt = stmt.where(sa.or_(_task.c.deadline.is_(None), _task.c.deadline >= now))
    return (
        stmt.order_by(_task.c.priority.desc(), _task.c.created_at, _task.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


@dataclass(frozen=True)
class QueueRef:
    """What the hot path needs of a queue (a ``Queue`` row has the same attributes)."""

    id: uuid.UUID
    account_id: uuid.UUID
    name: str


async def take_many(
    session: AsyncSession, queue: QueueRef | Queue, takes: list[Take], events: Events
) -> list[Taken | None]:
    """The best free tasks of ``queue``, one per take in order (None: not enough free ones here; the
    caller asks ``taskflow.take_next`` for those)."""
    now = utcnow()
    if dialect_of(session) == "postgresql":
        return await _take_many_pg(session, queue, takes, events, now)
    rows = list(await session.execute(_free(queue.id, len(takes), True, now)))
    if len(rows) < len(takes):
        rows += list(await session.execute(_free(queue.id, len(takes) - len(rows), False, now)))
    if not rows:
        return [None] * len(takes)
    given = list(zip(rows, takes, strict=False))
    expires = {row.id: now + timedelta(seconds=taskflow.lock_seconds(t.lock_s)) for row, t in given}
    ids = [row.id for row, _ in given]
    await _take_update(session, given, expires, ids, now)
    return _taken(queue, given, expires, now, events, len(takes))


async def _take_many_pg(
    session: AsyncSession, queue: QueueRef | Queue, takes: list[Take], events: Events, now: datetime
) -> list[Taken | None]:
    """``take_many`` in one statement: the candidates (overdue ones first, each look ``SKIP
    LOCKED``), numbered in the order ``take_next`` would give them, paired with the takers by that
    number and updated, the given rows returned."""
    expires = [now + timedelta(seconds=taskflow.lock_seconds(t.lock_s)) for t in takes]
    rows = list(
        await session.execute(
            _PG_TAKE_MANY,
            {
                "queue": queue.id,
                "k": len(takes),
                "now": now,
                "robots": [t.robot_id for t in takes],
                "jobs": [t.job_id for t in takes],
                "exps": expires,
            },
        )
    )
    out: list[Taken | None] = [None] * len(takes)
    for row in rows:
        i = int(row.rn) - 1
        out[i] = _taken_one(queue, row, takes[i], now, events, int(row.lock_token), expires[i])
    return out


async def _take_update(
    session: AsyncSession,
    given: list[tuple[Any, Take]],
    expires: dict[uuid.UUID, datetime],
    ids: list[uuid.UUID],
    now: datetime,
) -> None:
    await session.execute(
        sa.update(_task)
        .where(_task.c.id.in_(ids), _task.c.state == S.CREATED)
        .values(
            state=S.IN_PROGRESS,
            lock_robot_id=_by_id(_task.c.id, _task.c.lock_robot_id, {row.id: t.robot_id for row, t in given}),
            lock_job_id=_by_id(
                _task.c.id,
                _task.c.lock_job_id,
                {row.id: t.job_id for row, t in given if t.job_id is not None},
            ),
            lock_expires_at=_by_id(_task.c.id, _task.c.lock_expires_at, expires),
            lock_token=_task.c.lock_token + 1,
            started_at=now,
            ended_at=None,
            updated_at=now,
        )
    )


def _taken_one(
    queue: QueueRef | Queue, row: Any, t: Take, now: datetime, events: Events, token: int, expires: datetime
) -> Taken:
    """The task of ``row`` as taken by ``t`` (with its history entry queued on ``events``)."""
    events.state(queue.account_id, row.id, t.robot_id, now, S.IN_PROGRESS, None)
    if t.job_id is not None:
        events.rows[-1]["note"] = f"taken by job {t.job_id}"
    return Taken(
        id=row.id,
        name=row.name,
        description=row.description or "",
        parameters=dict(row.parameters or {}),
        priority=int(row.priority),
        tags=list(row.tags or []),
        deadline=row.deadline,
        retry_number=int(row.retry_number or 0),
        lock_token=token,
        lock_expires_at=expires,
    )


def _taken(
    queue: QueueRef | Queue,
    given: list[tuple[Any, Take]],
    expires: dict[uuid.UUID, datetime],
    now: datetime,
    events: Events,
    count: int,
) -> list[Taken | None]:
    out: list[Taken | None] = []
    for row, t in given:
        out.append(_taken_one(queue, row, t, now, events, int(row.lock_token) + 1, expires[row.id]))
    return out + [None] * (count - len(out))


def _fits(output: dict[str, Any] | None) -> bool:
    """An output ``taskflow.finish`` would take (its size limit); a bigger one goes to it, to be
    refused there with its reason."""
    if output is None:
        return True
    size = len(json.dumps(output, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return size <= taskflow.OUTPUT_MAX_BYTES


async def finish_many(session: AsyncSession, finishes: list[Finish], events: Events) -> list[bool]:
    """End these tasks Successful where the lock holder's guard passes; False where it does not
    (the caller asks ``taskflow.finish``, which says why, or recognises a replay)."""
    if not finishes:
        return []
    now = utcnow()
    fits = [_fits(f.output) for f in finishes]
    eligible = [f for f, ok in zip(finishes, fits, strict=True) if ok]
    if not eligible:
        return fits
    if dialect_of(session) == "postgresql":
        done = iter(await _finish_many_pg(session, eligible, events, now))
    else:
        done = iter(await _finish_many_generic(session, eligible, events, now))
    return [next(done) if ok else False for ok in fits]


async def _finish_many_generic(
    session: AsyncSession, finishes: list[Finish], events: Events, now: datetime
) -> list[bool]:
    held = {
        row.id: row
        for row in await session.execute(
            sa.select(
                _task.c.id,
                _task.c.account_id,
                _task.c.state,
                _task.c.lock_token,
                _task.c.lock_robot_id,
                _task.c.lock_expires_at,
            )
            .where(_task.c.id.in_(sorted({f.task_id for f in finishes})))
            .order_by(_task.c.id)
            .with_for_update()
        )
    }
    ok: list[bool] = []
    passing: dict[uuid.UUID, Finish] = {}
    for f in finishes:
        row = held.get(f.task_id)
        good = (
            row is not None
            and f.task_id not in passing
            and row.account_id == f.account_id
            and row.state == S.IN_PROGRESS
            and row.lock_token == f.token
            and row.lock_robot_id == f.robot_id
            and row.lock_expires_at is not None
            and row.lock_expires_at > now
        )
        ok.append(good)
        if good:
            passing[f.task_id] = f
    if passing:
        outputs = {i: f.output for i, f in passing.items() if f.output is not None}
        output: Any = _by_id(_task.c.id, _task.c.output, outputs) if outputs else None
        await session.execute(
            sa.update(_task)
            .where(_task.c.id.in_(list(passing)), _task.c.state == S.IN_PROGRESS)
            .values(
                state=S.SUCCESSFUL,
                ended_at=now,
                lock_expires_at=None,
                output=output,
                error=None,
                updated_at=now,
            )
        )
        for f in passing.values():
            events.state(f.account_id, f.task_id, f.robot_id, now, S.SUCCESSFUL, f.reason)
    return ok


async def _finish_many_pg(
    session: AsyncSession, finishes: list[Finish], events: Events, now: datetime
) -> list[bool]:
    """``finish_many`` in one statement: the guard in the ``WHERE``, the ended rows returned."""
    ordered = sorted(finishes, key=lambda f: f.task_id)  # rows locked in id order
    ended = {
        row[0]
        for row in await session.execute(
            _PG_FINISH,
            {
                "ids": [f.task_id for f in ordered],
                "tokens": [f.token for f in ordered],
                "robots": [f.robot_id for f in ordered],
                "accounts": [f.account_id for f in ordered],
                "outputs": [None if f.output is None else json.dumps(f.output) for f in ordered],
                "now": now,
            },
        )
    }
    ok: list[bool] = []
    counted: set[uuid.UUID] = set()
    for f in finishes:
        good = f.task_id in ended and f.task_id not in counted
        counted.add(f.task_id)
        ok.append(good)
        if good:
            events.state(f.account_id, f.task_id, f.robot_id, now, S.SUCCESSFUL, f.reason)
    return ok


# PostgreSQL: per-row values travel as arrays (``unnest``), so each statement has one text whatever
# the batch size: compiled once, prepared once per connection. Enum columns hold their values; the
# only text put into these statements is those enum values (constants of the code, not input).
_PG_CLAIM = sa.text(
    # The rows are locked by the sub-select, in id order (its ORDER BY comes before its lock): the
    # order every writer of robot rows uses (heartbeats too), so two of them never deadlock.
    """UPDATE robot SET inbound_seq = x.seq
    FROM (SELECT r.id, v.seq FROM robot AS r
          JOIN unnest(CAST(:ids AS uuid[]), CAST(:seqs AS bigint[])) AS v(id, seq) ON r.id = v.id
          ORDER BY r.id FOR UPDATE OF r) AS x
    WHERE robot.id = x.id AND robot.inbound_seq < x.seq
    RETURNING robot.id"""
)
_PG_TAKE_MANY = (
    sa.text(
        f"""WITH overdue AS (
            SELECT id, 0 AS grp, priority, created_at FROM task
            WHERE queue_id = :queue AND state = '{S.CREATED.value}' AND deadline < :now
            ORDER BY priority DESC, created_at, id LIMIT :k FOR UPDATE SKIP LOCKED
        ), normal AS (
            SELECT id, 1 AS grp, priority, created_at FROM task
            WHERE queue_id = :queue AND state = '{S.CREATED.value}' AND (deadline IS NULL OR deadline >= :now)
            ORDER BY priority DESC, created_at, id LIMIT :k FOR UPDATE SKIP LOCKED
        ), pick AS (
            SELECT id, row_number() OVER (ORDER BY grp, priority DESC, created_at, id) AS rn
            FROM (SELECT * FROM overdue UNION ALL SELECT * FROM normal) AS c
        ), who AS (
            SELECT * FROM unnest(CAST(:robots AS uuid[]), CAST(:jobs AS uuid[]), CAST(:exps AS timestamptz[]))
                WITH ORDINALITY AS w(robot, job, exp, rn)
        )
        UPDATE task SET state = '{S.IN_PROGRESS.value}', lock_robot_id = who.robot, lock_job_id = who.job,
            lock_expires_at = who.exp, lock_token = task.lock_token + 1, started_at = :now, ended_at = NULL,
            updated_at = :now
        FROM pick JOIN who ON who.rn = pick.rn
        WHERE task.id = pick.id AND task.state = '{S.CREATED.value}'
        RETURNING task.id, task.name, task.description, task.parameters, task.priority, task.tags,
            task.deadline, task.retry_number, task.lock_token, who.rn"""  # noqa: S608 - constants, not input
    )
    .bindparams(
        sa.bindparam("queue", type_=_task.c.queue_id.type), sa.bindparam("now", type_=_task.c.updated_at.type)
    )
    .columns(*TAKEN_COLUMNS, sa.column("rn", sa.BigInteger))
)
_PG_FINISH = sa.text(
    # Rows locked in id order by the sub-select (see _PG_CLAIM), then ended where the guard passes.
    f"""UPDATE task SET state = '{S.SUCCESSFUL.value}', ended_at = :now, lock_expires_at = NULL,
        output = CAST(x.output AS json), error = NULL, updated_at = :now
    FROM (SELECT t.id, v.token, v.robot, v.account, v.output FROM task AS t
          JOIN unnest(CAST(:ids AS uuid[]), CAST(:tokens AS bigint[]), CAST(:robots AS uuid[]),
                      CAST(:accounts AS uuid[]), CAST(:outputs AS text[]))
               AS v(id, token, robot, account, output) ON t.id = v.id
          ORDER BY t.id FOR UPDATE OF t) AS x
    WHERE task.id = x.id AND task.account_id = x.account AND task.state = '{S.IN_PROGRESS.value}'
      AND task.lock_token = x.token AND task.lock_robot_id = x.robot AND task.lock_expires_at > :now
    RETURNING task.id"""  # noqa: S608 - constants, not input
)
_PG_EVENTS = sa.text(
    f"""INSERT INTO task_event
        (id, account_id, task_id, at, kind, from_state, to_state, actor_type, actor_id, note, related_task_id)
    SELECT v.id, v.account, v.task, v.at, '{TaskEventKind.STATE.value}', v.from_state, v.to_state,
           '{ActorType.ROBOT.value}', v.actor, v.note, NULL
    FROM unnest(CAST(:ids AS uuid[]), CAST(:accounts AS uuid[]), CAST(:tasks AS uuid[]),
                CAST(:ats AS timestamptz[]), CAST(:froms AS text[]), CAST(:tos AS text[]),
                CAST(:actors AS uuid[]), CAST(:notes AS text[]))
         AS v(id, account, task, at, from_state, to_state, actor, note)"""  # noqa: S608 - constants
)
