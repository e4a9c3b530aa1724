"""Trigger endpoints: CRUD of every kind, test (fire now), preview of a schedule, fire history,
CSV export and import, the webhook secret's rotation, and the webhook itself.

Every change is audited in its transaction and announced after the commit (``TRIGGER_CHANGED``) so
every scheduler replica reloads the trigger within a second; a job a fire creates is announced
(``JOB_CREATED``) after the commit too. The webhook (``POST /triggers/{id}/webhook``) takes no
bearer token: the trigger's secret or an HMAC signature of the body is its authentication
(``webhook.py``).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, File, Header, Query, Request, Response, UploadFile
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Ctx, Principal, Transaction, require, run_db
from rpa_api.kit.names import contains
from rpa_api.kit.pagination import Page, PageParams, Paging, page_json, paginate, sorted_by
from rpa_api.openapi import errors
from rpa_api.queues.router import require_multipart
from rpa_api.triggers import csv_io, schemas, service, webhook
from rpa_common import events, triggerflow
from rpa_common.audit import add_audit_record
from rpa_common.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, Unprocessable
from rpa_common.models import Trigger, TriggerFire
from rpa_common.models.base import utcnow
from rpa_common.models.enums import ActorType, TriggerKind
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O
from rpa_common.nats import subjects
from rpa_common.nats.messages import TriggerChanged
from rpa_common.service import ServiceContext

router = APIRouter()
webhook_router = APIRouter()

Reader = Annotated[Principal, Depends(require(O.TRIGGERS, A.READ))]
Creator = Annotated[Principal, Depends(require(O.TRIGGERS, A.CREATE))]
Updater = Annotated[Principal, Depends(require(O.TRIGGERS, A.UPDATE))]
Deleter = Annotated[Principal, Depends(require(O.TRIGGERS, A.DELETE))]
Runner = Annotated[Principal, Depends(require(O.TRIGGERS, A.RUN))]

_SORTABLE = {
    "name": Trigger.name,
    "kind": Trigger.kind,
    "created_at": Trigger.created_at,
    "updated_at": Trigger.updated_at,
    "next_fire_at": Trigger.next_fire_at,
    "last_fired_at": Trigger.last_fired_at,
}
_REFS = "An id it names (process, robot, robot group, queue, calendar, folder) does not exist in your account"


async def _changed(ctx: ServiceContext, account_id: uuid.UUID, trigger_id: uuid.UUID, change: str) -> None:
    message = TriggerChanged(account_id=account_id, trigger_id=trigger_id, change=change)
    await ctx.publish(subjects.TRIGGER_CHANGED, message.encode())


def _event(session: AsyncSession, account_id: uuid.UUID, trigger: Trigger, change: str) -> None:
    """The ``trigger.changed`` event, in the transaction of the change (the outbox, issue 13)."""
    events.record(
        session,
        "trigger.changed",
        account_id=account_id,
        object_id=trigger.id,
        folder_id=trigger.folder_id,
        at=utcnow(),
        data={"trigger_id": str(trigger.id), "name": trigger.name, "change": change},
    )


async def _announce(ctx: ServiceContext, outcome: triggerflow.FireOutcome) -> None:
    if outcome.message is not None:
        await ctx.publish(subjects.JOB_CREATED, outcome.message.encode())


@router.post(
    "/triggers",
    status_code=201,
    summary="Create a trigger (a webhook trigger's secret is in this answer only)",
    responses=errors(s404=_REFS, s409="The name is taken"),
)
async def create_trigger(
    body: schemas.TriggerCreate, ctx: Ctx, tx: Transaction, principal: Creator
) -> schemas.TriggerCreated:
    trigger_id = uuid.uuid4()

    async def work(session: AsyncSession) -> schemas.TriggerCreated:
        saved = await service.create_trigger(session, ctx.settings, principal, trigger_id, body)
        _event(session, principal.account_id, saved.trigger, "created")
        out = schemas.TriggerOut.model_validate(saved.trigger).model_dump()
        return schemas.TriggerCreated(**out, webhook_secret=saved.secret)

    out = await tx.run(work)
    await _changed(ctx, principal.account_id, out.id, "created")
    return out


@router.get("/triggers", response_model=Page[schemas.TriggerOut], summary="List triggers")
async def list_triggers(
    tx: Transaction,
    paging: Annotated[PageParams, Depends(sorted_by(*_SORTABLE))],
    principal: Reader,
    name: Annotated[str | None, Query(max_length=100, description="Name contains (any case)")] = None,
    kind: Annotated[list[TriggerKind] | None, Query(description="Any of these kinds (repeatable)")] = None,
    enabled: bool | None = None,
    process_id: uuid.UUID | None = None,
    folder_id: uuid.UUID | None = None,
) -> Response:
    async def work(session: AsyncSession) -> Response:
        stmt = service.triggers_query(principal)
        if name:
            stmt = stmt.where(contains(Trigger.name, name))
        if kind:
            stmt = stmt.where(Trigger.kind.in_(kind))
        if enabled is not None:
            stmt = stmt.where(Trigger.enabled.is_(enabled))
        if process_id is not None:
            stmt = stmt.where(Trigger.process_id == process_id)
        if folder_id is not None:
            stmt = stmt.where(Trigger.folder_id == folder_id)
        rows, total = await paginate(session, stmt, paging, _SORTABLE, "name", columns_of=schemas.TriggerOut)
        return page_json(schemas.TriggerOut, rows, total, paging)

    return await tx.read(work)


@router.get(
    "/triggers/export",
    summary="Every trigger you see, as CSV (names instead of ids; no secrets)",
    response_class=Response,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "A CSV file"}},
)
async def export_triggers(tx: Transaction, principal: Reader) -> Response:
    rows = await tx.read(lambda session: service.export_rows(session, principal))
    text = await asyncio.to_thread(csv_io.write, rows)
    return Response(
        text.encode(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="triggers.csv"'},
    )


CsvFile = Annotated[
    UploadFile,
    File(
        description="A CSV file (UTF-8) as GET /triggers/export writes it: a header row, then one trigger per row"
    ),
]


@router.post(
    "/triggers/import",
    status_code=201,
    summary="Create the triggers of a CSV file: all rows or, on a bad row, none",
    description=(
        "Columns as `GET /triggers/export` writes them; `name`, `kind` and `process` are required, the "
        "others optional. Objects are given by name (`process`, `robot`, `robot_group`, `queue`, "
        "`calendar`, `source_process`, `folder`). A bad row is a 422 naming its `line` (the header is "
        "line 1) and `column`; nothing of the file is written then. A webhook trigger's new secret is in "
        "the answer only."
    ),
    dependencies=[Depends(require_multipart)],
    responses=errors(
        s409="A row's name is taken",
        s413="The file is larger than RPA_TASK_CSV_MAX_BYTES or has more rows than RPA_TASK_CSV_MAX_ROWS",
        s415="The body is not multipart/form-data",
    ),
)
async def import_triggers(file: CsvFile, ctx: Ctx, tx: Transaction, principal: Creator) -> schemas.Imported:
    data = await file.read()
    if len(data) > ctx.settings.task_csv_max_bytes:
        raise PayloadTooLarge(
            f"the file is larger than {ctx.settings.task_csv_max_bytes} bytes", field="file"
        )
    rows = await asyncio.to_thread(csv_io.parse, data, ctx.settings.task_csv_max_rows)
    ids = [uuid.uuid4() for _ in rows]

    async def work(session: AsyncSession) -> list[service.Saved]:
        saved = await service.import_rows(session, ctx.settings, principal, rows, ids)
        for one in saved:
            _event(session, principal.account_id, one.trigger, "created")
        return saved

    saved = await tx.run(work)
    for s in saved:
        await _changed(ctx, principal.account_id, s.trigger.id, "created")
    return schemas.Imported(
        added=len(saved),
        items=[
            schemas.ImportedTrigger(id=s.trigger.id, name=s.trigger.name, webhook_secret=s.secret)
            for s in saved
        ],
    )


@router.get("/triggers/{trigger_id:uuid}", summary="A trigger, with its last and next fire")
async def get_trigger(trigger_id: uuid.UUID, tx: Transaction, principal: Reader) -> schemas.TriggerOut:
    async def work(session: AsyncSession) -> schemas.TriggerOut:
        return schemas.TriggerOut.model_validate(await service.get_trigger(session, principal, trigger_id))

    return await tx.read(work)


@router.patch(
    "/triggers/{trigger_id:uuid}",
    summary="Change a trigger",
    responses=errors(s404=_REFS, s409="The name is taken"),
)
async def update_trigger(
    trigger_id: uuid.UUID, body: schemas.TriggerUpdate, ctx: Ctx, tx: Transaction, principal: Updater
) -> schemas.TriggerOut:
    async def work(session: AsyncSession) -> schemas.TriggerOut:
        trigger = await service.update_trigger(session, principal, trigger_id, body)
        _event(session, principal.account_id, trigger, "updated")
        return schemas.TriggerOut.model_validate(trigger)

    out = await tx.run(work)
    await _changed(ctx, principal.account_id, out.id, "updated")
    return out


@router.delete("/triggers/{trigger_id:uuid}", status_code=204, summary="Delete a trigger")
async def delete_trigger(trigger_id: uuid.UUID, ctx: Ctx, tx: Transaction, principal: Deleter) -> Response:
    async def work(session: AsyncSession) -> None:
        trigger = await service.delete_trigger(session, principal, trigger_id)
        _event(session, principal.account_id, trigger, "deleted")

    await tx.run(work)
    await _changed(ctx, principal.account_id, trigger_id, "deleted")
    return Response(status_code=204)


@router.post(
    "/triggers/{trigger_id:uuid}/test",
    status_code=201,
    summary="Fire a trigger now, whatever its kind and condition (a test)",
    description="Creates a job as the trigger would; `reason` says why none was created (no version...).",
)
async def test_trigger(
    trigger_id: uuid.UUID, ctx: Ctx, tx: Transaction, principal: Runner
) -> schemas.FireOut:
    fire_id = uuid.uuid4()
    outcome = await tx.run(lambda session: service.test_fire(session, principal, trigger_id, fire_id))
    await _announce(ctx, outcome)
    return schemas.FireOut(job_id=outcome.job_id, created=outcome.created, reason=outcome.reason)


@router.get(
    "/triggers/{trigger_id:uuid}/preview",
    summary="A schedule's next fire times (calendar skips applied)",
    responses=errors(s409="The trigger is not a schedule"),
)
async def preview_trigger(
    trigger_id: uuid.UUID,
    tx: Transaction,
    principal: Reader,
    n: Annotated[int, Query(ge=1, le=100, description="How many fire times")] = 10,
) -> schemas.Preview:
    async def work(session: AsyncSession) -> schemas.Preview:
        trigger = await service.get_trigger(session, principal, trigger_id)
        return schemas.Preview(fire_times=await service.preview(trigger, n, session))

    return await tx.read(work)


@router.get(
    "/triggers/{trigger_id:uuid}/fires",
    response_model=Page[schemas.FireRecord],
    summary="A trigger's fires, newest first: the job each created, or why none",
)
async def list_fires(
    trigger_id: uuid.UUID, tx: Transaction, principal: Reader, paging: Paging
) -> Page[schemas.FireRecord]:
    async def work(session: AsyncSession) -> Page[schemas.FireRecord]:
        trigger = await service.get_trigger(session, principal, trigger_id)
        stmt = service.fires_query(trigger).order_by(TriggerFire.fired_at.desc(), TriggerFire.fire_key.desc())
        rows = (await session.execute(stmt.limit(paging.limit).offset(paging.offset))).all()
        total = await session.scalar(sa.select(sa.func.count()).where(TriggerFire.trigger_id == trigger.id))
        return Page[schemas.FireRecord](
            items=[schemas.FireRecord.model_validate(r) for r in rows],
            total=int(total or 0),
            limit=paging.limit,
            offset=paging.offset,
        )

    return await tx.read(work)


@router.post(
    "/triggers/{trigger_id:uuid}/webhook-secret",
    summary="A new webhook secret (the old one stops working); shown only in this answer",
    responses=errors(s409="The trigger is not a webhook"),
)
async def rotate_webhook_secret(
    trigger_id: uuid.UUID, ctx: Ctx, tx: Transaction, principal: Updater
) -> schemas.WebhookSecret:
    secret = await tx.run(lambda session: service.rotate_secret(session, ctx.settings, principal, trigger_id))
    return schemas.WebhookSecret(webhook_secret=secret)


# The webhook ---------------------------------------------------------------------------------------


@webhook_router.post(
    "/triggers/{trigger_id:uuid}/webhook",
    status_code=202,
    summary="Call a webhook trigger: starts a job with the body's fields as input arguments",
    description=(
        "No bearer token: authenticate with the trigger's secret in `X-RPA-Trigger-Secret` (webhook_auth "
        "`secret`), or (webhook_auth `hmac`) with `X-RPA-Timestamp` (Unix seconds, within 300 s of the "
        "server's clock) and `X-RPA-Signature: sha256=<hex HMAC-SHA256 under the secret of "
        "'<timestamp>.' followed by the raw body>`. The body, a JSON object, gives input arguments "
        "(over the trigger's own). A signed request creates one job however often it is sent."
    ),
    responses=errors(
        s401="Missing or wrong secret or signature, or a timestamp out of the window: no job is created",
        s404="No webhook trigger has this id",
        s409="The trigger is disabled",
    ),
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}}
        }
    },
)
async def call_webhook(
    trigger_id: uuid.UUID,
    request: Request,
    ctx: Ctx,
    x_rpa_timestamp: Annotated[
        str | None, Header(alias=webhook.TIMESTAMP_HEADER, description="hmac: the time in Unix seconds")
    ] = None,
    x_rpa_signature: Annotated[
        str | None, Header(alias=webhook.SIGNATURE_HEADER, description="hmac: sha256=<hex>")
    ] = None,
    x_rpa_trigger_secret: Annotated[
        str | None, Header(alias=webhook.SECRET_HEADER, description="secret: the trigger's secret")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", max_length=200, description="secret: one job per key"),
    ] = None,
) -> schemas.FireOut:
    # The headers are read from the request as sent (the parameters above document them).
    body = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    # The body is checked before the trigger is looked up, as every endpoint checks its input first.
    args = _body_args(body)

    async def work(session: AsyncSession) -> triggerflow.FireOutcome:
        trigger = await session.get(Trigger, trigger_id, with_for_update=False)
        if trigger is None or trigger.kind != TriggerKind.WEBHOOK:
            raise NotFound.of("webhook trigger", trigger_id)
        fire_key = await webhook.authenticate(session, ctx.settings, trigger, headers, body)
        if not trigger.enabled:
            raise Conflict("the trigger is disabled")
        outcome = await service.fire(session, trigger, fire_key=fire_key, input_args=args)
        if outcome.created:
            add_audit_record(
                session,
                account_id=trigger.account_id,
                kind="webhook",
                actor_type=ActorType.TRIGGER,
                actor_id=trigger.id,
                actor_name=trigger.name,
                action="fire",
                object_type="trigger",
                object_id=trigger.id,
                # Argument values may hold anything: their names only.
                changes={"job_id": str(outcome.job_id), "input_arg_names": sorted(args)},
                client_address=request.client.host if request.client else None,
                user_agent=request.headers.get("user-agent"),
            )
        return outcome

    outcome = await run_db(ctx, work)
    await _announce(ctx, outcome)
    return schemas.FireOut(job_id=outcome.job_id, created=outcome.created, reason=outcome.reason)


def _body_args(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = json.loads(body, parse_constant=_no_constant)
    except ValueError:
        raise BadRequest("the body is not JSON", field="body") from None
    if not isinstance(value, dict):
        raise Unprocessable(
            "the body must be a JSON object (its fields become input arguments)", field="body"
        )
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
