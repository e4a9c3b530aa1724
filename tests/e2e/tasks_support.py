"""Helpers of the task e2e tests: queues through the API, test processes, reading tasks back."""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from rpa_common.models import Task, TaskEvent
from tests.e2e.conftest import API, Api

PROCESSES = Path(__file__).parent / "processes"
"""Scripts of the task tests (published like ``examples/``, but they are test fixtures)."""


async def create_queue(api: Api, name: str | None = None, **settings: Any) -> str:
    """A queue of the tenant, made through the API; its name."""
    name = name or f"q-{uuid.uuid4().hex[:10]}"
    await api.call("POST", "/queues", 201, json={"name": name, **settings})
    return name


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
