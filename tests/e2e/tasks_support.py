"""Helpers of the task e2e tests: queues and tasks, test processes, reading tasks back.

Queues and the tasks people add are made with ``rpa_common.taskflow`` (the functions the API's
queue endpoints call) in the test's own transactions: these tests are about the robots' side.
"""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from rpa_common import taskflow
from rpa_common.db.uow import run_in_transaction
from rpa_common.models import Queue, Task, TaskEvent
from rpa_common.taskflow import TaskInput
from tests.e2e.conftest import API, Api

PROCESSES = Path(__file__).parent / "processes"
"""Scripts of the task tests (published like ``examples/``, but they are test fixtures)."""


async def create_queue(api: Api, name: str | None = None, **settings: Any) -> str:
    """A queue of the tenant (``settings``: columns of ``Queue``); its name."""
    name = name or f"q-{uuid.uuid4().hex[:10]}"

    async def work(session: Any) -> None:
        session.add(Queue(id=uuid.uuid4(), account_id=api.tenant.account_id, name=name, **settings))

    await run_in_transaction(api.ctx.sessions, work)
    return name


async def add_tasks(api: Api, queue: str, items: list[TaskInput], chunk: int = 1000) -> list[str]:
    """Add ``items`` to ``queue`` as the tenant's admin, ``chunk`` per transaction; their ids."""
    ids: list[str] = []
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]

        async def work(session: Any, part: list[TaskInput] = part) -> list[str]:
            q = await taskflow.queue_by_name(session, api.tenant.account_id, queue)
            assert q is not None, queue
            made = await taskflow.add_tasks(
                session, account_id=api.tenant.account_id, queue=q, items=part, user_id=api.tenant.admin_id
            )
            return [str(t.id) for t in made]

        ids += await run_in_transaction(api.ctx.sessions, work)
    return ids


def _zip_dir(path: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for item in sorted(path.iterdir()):
            if item.is_file() and item.suffix in (".py", ".json"):
                zf.write(item, item.name)
    return buf.getvalue()


async def publish_dir(api: Api, name: str) -> str:
    """Publish ``tests/e2e/processes/<name>`` (remote publishing); the process id."""
    key = f"tests:{name}"
    if key not in api.processes:
        r = await api.client.post(
            f"{API}/processes/publish",
            files={"package": (f"{name}.zip", _zip_dir(PROCESSES / name), "application/zip")},
            headers=api.tenant.headers,
        )
        assert r.status_code == 201, r.text
        api.processes[key] = r.json()["process"]["id"]
    return api.processes[key]


async def tasks_of(api: Api, ids: Iterable[str]) -> list[Task]:
    wanted = [uuid.UUID(i) for i in ids]
    out: list[Task] = []
    async with api.ctx.sessions() as session:
        for start in range(0, len(wanted), 500):
            rows = await session.execute(sa.select(Task).where(Task.id.in_(wanted[start : start + 500])))
            out += rows.scalars()
    order = {t: i for i, t in enumerate(wanted)}
    return sorted(out, key=lambda t: order[t.id])


async def task_events(api: Api, ids: Iterable[str]) -> dict[str, list[TaskEvent]]:
    """Each task's history, oldest first."""
    wanted = [uuid.UUID(i) for i in ids]
    out: dict[str, list[TaskEvent]] = {str(i): [] for i in wanted}
    async with api.ctx.sessions() as session:
        for start in range(0, len(wanted), 500):
            rows = await session.execute(
                sa.select(TaskEvent)
                .where(TaskEvent.task_id.in_(wanted[start : start + 500]))
                .order_by(TaskEvent.at, TaskEvent.id)
            )
            for event in rows.scalars():
                out[str(event.task_id)].append(event)
    return out
