"""Queue and task endpoints: queues CRUD and statistics; tasks added one, many or from a CSV file,
listed, read with their history, changed by people (data and state), retried and deleted.

Robots take, renew and finish tasks through the gateway, not here (``rpa_common.taskflow``).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, File, Query, Request, Response, UploadFile
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Ctx, Principal, Transaction, require
from rpa_api.kit.names import contains
from rpa_api.kit.pagination import Page, PageParams, page_json, paginate, sorted_by
from rpa_api.kit.schemas import QueryDatetime
from rpa_api.openapi import errors
from rpa_api.queues import csv_import, schemas, service
from rpa_common.errors import DomainError, UnsupportedMediaType
from rpa_common.models import Queue
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O
from rpa_common.models.enums import TaskPriority, TaskState

router = APIRouter()
tasks_router = APIRouter()

QueueReader = Annotated[Principal, Depends(require(O.QUEUES, A.READ))]
QueueCreator = Annotated[Principal, Depends(require(O.QUEUES, A.CREATE))]
QueueUpdater = Annotated[Principal, Depends(require(O.QUEUES, A.UPDATE))]
QueueDeleter = Annotated[Principal, Depends(require(O.QUEUES, A.DELETE))]
TaskReader = Annotated[Principal, Depends(require(O.TASKS, A.READ))]
TaskCreator = Annotated[Principal, Depends(require(O.TASKS, A.CREATE))]
TaskUpdater = Annotated[Principal, Depends(require(O.TASKS, A.UPDATE))]
TaskDeleter = Annotated[Principal, Depends(require(O.TASKS, A.DELETE))]

_SORTABLE = {"name": Queue.name, "created_at": Queue.created_at, "updated_at": Queue.updated_at}
_TASK_ADD_ERRORS = errors(
    s409="The queue forbids duplicate names and this name is taken",
    s413="More tasks than RPA_TASK_BULK_MAX in one call",
)


# Queues ------------------------------------------------------------------------------------------


@router.post("/queues", status_code=201, summary="Create a queue", responses=errors(s409="The name is taken"))
async def create_queue(
    body: schemas.QueueCreate, tx: Transaction, principal: QueueCreator
) -> schemas.QueueOut:
    queue_id = uuid.uuid4()  # outside the closure: a re-run after a lost commit finds this queue

    async def work(session: AsyncSession) -> schemas.QueueOut:
        return schemas.QueueOut.model_validate(await service.create_queue(session, principal, queue_id, body))

    return await tx.run(work)


@router.get("/queues", response_model=Page[schemas.QueueOut], summary="List queues")
async def list_queues(
    tx: Transaction,
    paging: Annotated[PageParams, Depends(sorted_by(*_SORTABLE))],
    principal: QueueReader,
    name: Annotated[str | None, Query(max_length=100, description="Name contains (any case)")] = None,
    folder_id: uuid.UUID | None = None,
) -> Response:
    async def work(session: AsyncSession) -> Response:
        stmt = service.queues_query(principal)
        if name:
            stmt = stmt.where(contains(Queue.name, name))
        if folder_id is not None:
            stmt = stmt.where(Queue.folder_id == folder_id)
        rows, total = await paginate(session, stmt, paging, _SORTABLE, "name", columns_of=schemas.QueueOut)
        return page_json(schemas.QueueOut, rows, total, paging)

    return await tx.read(work)


@router.get("/queues/{queue_id:uuid}", summary="A queue")
async def get_queue(queue_id: uuid.UUID, tx: Transaction, principal: QueueReader) -> schemas.QueueOut:
    async def work(session: AsyncSession) -> schemas.QueueOut:
        return schemas.QueueOut.model_validate(await service.get_queue(session, principal, queue_id))

    return await tx.read(work)


@router.patch(
    "/queues/{queue_id:uuid}",
    summary="Change a queue's settings",
    responses=errors(s409="The name is taken, or duplicate names forbidden while the queue has tasks"),
)
async def update_queue(
    queue_id: uuid.UUID, body: schemas.QueueUpdate, tx: Transaction, principal: QueueUpdater
) -> schemas.QueueOut:
    async def work(session: AsyncSession) -> schemas.QueueOut:
        return schemas.QueueOut.model_validate(await service.update_queue(session, principal, queue_id, body))

    return await tx.run(work)


@router.delete(
    "/queues/{queue_id:uuid}",
    status_code=204,
    summary="Delete a queue and its tasks",
    responses=errors(s409="Robots are working tasks of the queue (In Progress)"),
)
async def delete_queue(queue_id: uuid.UUID, tx: Transaction, principal: QueueDeleter) -> Response:
    await tx.run(lambda session: service.delete_queue(session, principal, queue_id))
    return Response(status_code=204)


@router.get("/queues/{queue_id:uuid}/stats", summary="A queue's figures: counts by state, throughput, ages")
async def queue_stats(
    queue_id: uuid.UUID,
    tx: Transaction,
    principal: QueueReader,
    window_s: Annotated[
        int, Query(ge=60, le=31 * 24 * 3600, description="The window of throughput and mean time, in seconds")
    ] = 3600,
) -> schemas.QueueStats:
    async def work(session: AsyncSession) -> schemas.QueueStats:
        queue = await service.get_queue(session, principal, queue_id)
        return await service.stats(session, queue, window_s)

    return await tx.read(work)


# Tasks -------------------------------------------------------------------------------------------


@tasks_router.post(
    "/queues/{queue_id:uuid}/tasks",
    status_code=201,
    summary="Add a task to a queue",
    responses=_TASK_ADD_ERRORS,
)
async def add_task(
    queue_id: uuid.UUID, body: schemas.TaskCreate, ctx: Ctx, tx: Transaction, principal: TaskCreator
) -> schemas.TaskOut:
    ids = [uuid.uuid4()]

    async def work(session: AsyncSession, rerun: bool) -> schemas.TaskOut:
        queue = await service.get_queue(session, principal, queue_id)
        [task] = await service.add_tasks(
            session,
            principal,
            queue,
            [service.task_input(body)],
            ids,
            bulk_max=ctx.settings.task_bulk_max,
            rerun=rerun,
            prefix=None,
        )
        return schemas.TaskOut.model_validate(task)

    return await tx.run_aware(work)


@tasks_router.post(
    "/queues/{queue_id:uuid}/tasks/bulk",
    status_code=201,
    summary="Add many tasks to a queue: all or none",
    responses=_TASK_ADD_ERRORS,
)
async def add_tasks_bulk(
    queue_id: uuid.UUID, body: schemas.TasksCreate, ctx: Ctx, tx: Transaction, principal: TaskCreator
) -> schemas.TasksAdded:
    ids = [uuid.uuid4() for _ in body.tasks]

    async def work(session: AsyncSession, rerun: bool) -> schemas.TasksAdded:
        queue = await service.get_queue(session, principal, queue_id)
        tasks = await service.add_tasks(
            session,
            principal,
            queue,
            [service.task_input(t) for t in body.tasks],
            ids,
            bulk_max=ctx.settings.task_bulk_max,
            rerun=rerun,
        )
        return schemas.TasksAdded(added=len(tasks), items=[schemas.TaskOut.model_validate(t) for t in tasks])

    return await tx.run_aware(work)


async def require_multipart(request: Request) -> None:
    """Uploads are multipart only; checked before the form is read, so a JSON body is a 415."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        raise UnsupportedMediaType(
            f"content-type {ctype or '(none)'} given; send multipart/form-data with a 'file'"
        )


CsvFile = Annotated[
    UploadFile,
    File(description="A CSV file (UTF-8): a header row with a 'name' column, then one task per row"),
]


@tasks_router.post(
    "/queues/{queue_id:uuid}/tasks/csv",
    status_code=201,
    summary="Add the tasks of a CSV file: all rows or, on a bad row, none",
    description=(
        "Columns: `name` (required), `description`, `priority` (low, normal, high or 1-3), `tags` "
        "(separated by `;`), `deadline` and `delay_until` (ISO 8601, UTC when no zone is given); every "
        "other column is a parameter named by its header. A bad row is a 422 giving its line number "
        "(the header is line 1) in `line` and in the detail; nothing of the file is written then."
    ),
    dependencies=[Depends(require_multipart)],
    responses=errors(
        s409="The queue forbids duplicate names and a row's name is taken",
        s413="The file is larger than RPA_TASK_CSV_MAX_BYTES or has more rows than RPA_TASK_CSV_MAX_ROWS",
        s415="The body is not multipart/form-data",
    ),
)
async def upload_csv(
    queue_id: uuid.UUID, file: CsvFile, ctx: Ctx, tx: Transaction, principal: TaskCreator
) -> schemas.CsvAdded:
    data = await file.read()
    parsed = await asyncio.to_thread(csv_import.parse, data, ctx.settings.task_csv_max_rows)
    ids = [uuid.uuid4() for _ in parsed.items]

    async def work(session: AsyncSession, rerun: bool) -> schemas.CsvAdded:
        queue = await service.get_queue(session, principal, queue_id)
        try:
            with service.task_errors():
                tasks = await service.add_tasks(
                    session,
                    principal,
                    queue,
                    parsed.items,
                    ids,
                    bulk_max=ctx.settings.task_csv_max_rows,
                    rerun=rerun,
                    source="csv",
                )
        except DomainError as err:
            raise csv_error(err, parsed) from None
        return schemas.CsvAdded(added=len(tasks))

    return await tx.run_aware(work)


def csv_error(err: DomainError, parsed: csv_import.ParsedCsv) -> DomainError:
    """A task's error as the line of the file it came from (``tasks.7.name`` -> line of row 7)."""
    parts = (err.field or "").split(".")
    if len(parts) >= 2 and parts[0] == "tasks" and parts[1].isdigit() and int(parts[1]) < len(parsed.lines):
        line = parsed.lines[int(parts[1])]
        column = ".".join(parts[2:]) or None
        where = f"line {line}" + (f", column {column!r}" if column else "")
        return type(err)(
            f"{where}: {err.detail}; nothing was added",
            field="file",
            line=line,
            column=column,
            **{k: v for k, v in err.extra.items() if k == "code"},
        )
    return err


@tasks_router.get(
    "/queues/{queue_id:uuid}/tasks", response_model=Page[schemas.TaskOut], summary="List a queue's tasks"
)
async def list_tasks(
    queue_id: uuid.UUID,
    tx: Transaction,
    principal: TaskReader,
    paging: Annotated[PageParams, Depends(sorted_by(*service.SORTABLE))],
    state: Annotated[list[TaskState] | None, Query(description="Any of these states (repeatable)")] = None,
    priority: Annotated[
        list[TaskPriority] | None, Query(description="Any of these priorities (repeatable)")
    ] = None,
    tag: Annotated[
        list[Annotated[str, Query(min_length=1, max_length=100)]] | None,
        Query(description="Tasks carrying every tag given (repeatable)", max_length=20),
    ] = None,
    name: Annotated[str | None, Query(max_length=255, description="Name contains (any case)")] = None,
    deadline_from: Annotated[QueryDatetime | None, Query(description="Deadline at or after")] = None,
    deadline_to: Annotated[QueryDatetime | None, Query(description="Deadline at or before")] = None,
    created_from: Annotated[QueryDatetime | None, Query(description="Added at or after")] = None,
    created_to: Annotated[QueryDatetime | None, Query(description="Added at or before")] = None,
    ended_from: Annotated[QueryDatetime | None, Query(description="Ended at or after")] = None,
    ended_to: Annotated[QueryDatetime | None, Query(description="Ended at or before")] = None,
) -> Response:
    async def work(session: AsyncSession) -> Response:
        queue = await service.get_queue(session, principal, queue_id)
        stmt = service.list_tasks_query(
            session,
            queue,
            state=state,
            priority=priority,
            tag=tag,
            name=name,
            deadline_from=deadline_from,
            deadline_to=deadline_to,
            created_from=created_from,
            created_to=created_to,
            ended_from=ended_from,
            ended_to=ended_to,
        )
        rows, total = await paginate(
            session, stmt, paging, service.SORTABLE, "created_at", columns_of=schemas.TaskOut
        )
        return page_json(schemas.TaskOut, rows, total, paging)

    return await tx.read(work)


@tasks_router.get("/queues/{queue_id:uuid}/tasks/{task_id:uuid}", summary="A task with its history")
async def get_task(
    queue_id: uuid.UUID, task_id: uuid.UUID, tx: Transaction, principal: TaskReader
) -> schemas.TaskDetail:
    async def work(session: AsyncSession) -> schemas.TaskDetail:
        _, task = await service.get_task(session, principal, queue_id, task_id)
        return await service.task_detail(session, task)

    return await tx.read(work)


@tasks_router.patch(
    "/queues/{queue_id:uuid}/tasks/{task_id:uuid}",
    summary="Change a task: its data while it waits, its state as a person may",
    responses=errors(
        s409="A state change that is not allowed, data of a task no longer waiting, or a taken name"
    ),
)
async def update_task(
    queue_id: uuid.UUID, task_id: uuid.UUID, body: schemas.TaskUpdate, tx: Transaction, principal: TaskUpdater
) -> schemas.TaskDetail:
    async def work(session: AsyncSession) -> schemas.TaskDetail:
        task = await service.update_task(session, principal, queue_id, task_id, body)
        return await service.task_detail(session, task)

    return await tx.run(work)


@tasks_router.post(
    "/queues/{queue_id:uuid}/tasks/{task_id:uuid}/retry",
    status_code=201,
    summary="Retry a failed or abandoned task: a new task linked to it",
    responses=errors(s409="The task is not failed or abandoned, or was retried already"),
)
async def retry_task(
    queue_id: uuid.UUID,
    task_id: uuid.UUID,
    tx: Transaction,
    principal: TaskUpdater,
    body: schemas.TaskRetry | None = None,
) -> schemas.TaskOut:
    retry_id = uuid.uuid4()
    reason = body.reason if body is not None else None

    async def work(session: AsyncSession) -> schemas.TaskOut:
        retry = await service.retry_task(session, principal, queue_id, task_id, reason, retry_id)
        return schemas.TaskOut.model_validate(retry)

    return await tx.run(work)


@tasks_router.delete(
    "/queues/{queue_id:uuid}/tasks/{task_id:uuid}",
    status_code=204,
    summary="Delete a task (not while In Progress)",
    responses=errors(s409="A robot is working the task"),
)
async def delete_task(
    queue_id: uuid.UUID, task_id: uuid.UUID, tx: Transaction, principal: TaskDeleter
) -> Response:
    await tx.run(lambda session: service.delete_task(session, principal, queue_id, task_id))
    return Response(status_code=204)
