"""Triggers: rules and queries for people (the API).

Functions here run inside the request's unit of work and only ``flush``. A trigger is scoped to the
caller's account and folders; every id it names (process, robot, robot group, queue, calendar,
source process) must be of the caller's account and in a folder the caller sees, else a 404 naming
the field. Rules across fields are checked on the merged trigger, so a PATCH is held to the same
rules as a POST. Firing itself (one job per fire key) is ``rpa_common.triggerflow``, shared with the
scheduler, the gateway and the job state machine.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal
from rpa_api.kit.audit import record
from rpa_api.kit.folders import check_folder, check_name_and_folder, check_visible
from rpa_api.kit.lookup import get_owned
from rpa_api.kit.names import flush_or_conflict, name_taken
from rpa_api.kit.patch import apply_patch, require_not_null
from rpa_api.triggers import csv_io, schemas, webhook
from rpa_common import triggerflow
from rpa_common.errors import Conflict, NotFound, Unprocessable
from rpa_common.models import Calendar, Job, Process, Queue, Robot, RobotGroup, Trigger, TriggerFire
from rpa_common.models.base import utcnow
from rpa_common.models.enums import JobPriority, MisfirePolicy, RobotRole, TriggerKind
from rpa_common.settings import Settings

K = TriggerKind

# The fields each kind uses beyond the common ones; the others must stay unset (null).
SCHEDULE_FIELDS = ("cron", "interval_s", "once_at", "calendar_id")
KIND_FIELDS: dict[TriggerKind, tuple[str, ...]] = {
    K.SCHEDULE: SCHEDULE_FIELDS,
    K.QUEUE: ("queue_id",),
    K.WEBHOOK: (),
    K.ROBOT: (),
    K.JOB_COMPLETED: ("source_process_id",),
}
NULLABLE_KIND_FIELDS = ("cron", "interval_s", "once_at", "calendar_id", "queue_id", "source_process_id")
# Fields whose change moves the schedule's cursor (next_fire_at).
_SCHEDULE_CHANGES = {"cron", "time_zone", "interval_s", "once_at", "calendar_id", "enabled"}


def triggers_query(principal: Principal) -> sa.Select[Trigger]:
    return sa.select(Trigger).where(
        Trigger.account_id == principal.account_id, principal.folder_clause(Trigger.folder_id)
    )


async def get_trigger(
    session: AsyncSession, principal: Principal, trigger_id: uuid.UUID, *, lock: bool = False
) -> Trigger:
    return await get_owned(
        session, triggers_query(principal).where(Trigger.id == trigger_id), "trigger", trigger_id, lock=lock
    )


def _taken(name: str) -> str:
    return f"a trigger named {name!r} already exists"


# Checks ------------------------------------------------------------------------------------------


async def _check_references(session: AsyncSession, principal: Principal, fields: dict[str, Any]) -> None:
    """Every id given names an object of the caller's account in a folder it sees (404 naming it)."""
    for field, model, kind in (
        ("process_id", Process, "process"),
        ("source_process_id", Process, "process"),
        ("robot_group_id", RobotGroup, "robot group"),
        ("queue_id", Queue, "queue"),
        ("calendar_id", Calendar, "calendar"),
    ):
        ident = fields.get(field)
        if ident is not None:
            await check_visible(session, principal, model, ident, kind, field)
    robot_id = fields.get("robot_id")
    if robot_id is not None:
        robot = (
            await session.execute(
                sa.select(Robot.name, Robot.role).where(
                    Robot.id == robot_id,
                    Robot.account_id == principal.account_id,
                    principal.folder_clause(Robot.folder_id),
                )
            )
        ).one_or_none()
        if robot is None:
            raise NotFound.of("robot", robot_id, field="robot_id")
        if robot.role == RobotRole.COORDINATOR:
            raise Unprocessable(f"robot {robot.name!r} is a coordinator and runs no jobs", field="robot_id")


def check_rules(trigger: Trigger) -> None:
    """Rules across fields of a whole trigger (422 naming the field)."""
    kind = TriggerKind(trigger.kind)
    for field in NULLABLE_KIND_FIELDS:
        if field not in KIND_FIELDS[kind] and getattr(trigger, field) is not None:
            raise Unprocessable(f"{field} is not a setting of a {kind.value} trigger", field=field)
    if trigger.robot_id is not None and trigger.robot_group_id is not None:
        raise Unprocessable("give one of robot_id and robot_group_id, not both", field="robot_group_id")
    if kind != K.ROBOT and trigger.robot_id is None and trigger.robot_group_id is None:
        raise Unprocessable(
            f"a {kind.value} trigger needs a target: give robot_id or robot_group_id", field="robot_id"
        )
    if kind == K.SCHEDULE:
        triggerflow.validate_schedule(
            cron=trigger.cron,
            time_zone=trigger.time_zone,
            interval_s=trigger.interval_s,
            once_at=trigger.once_at,
            misfire_policy=str(trigger.misfire_policy),
            misfire_grace_s=trigger.misfire_grace_s,
        )
    elif kind == K.QUEUE and trigger.queue_id is None:
        raise Unprocessable("a queue trigger needs queue_id", field="queue_id")
    elif kind == K.JOB_COMPLETED:
        if trigger.source_process_id is None:
            raise Unprocessable("a job completion trigger needs source_process_id", field="source_process_id")
        if not trigger.completion_states:
            raise Unprocessable("give at least one final state", field="completion_states")
    if kind == K.QUEUE and trigger.min_tasks < 1:
        raise Unprocessable("min_tasks must be at least 1", field="min_tasks")


async def _schedule_cursor(session: AsyncSession, trigger: Trigger, now: datetime) -> None:
    """A schedule's next occurrence from now, calendar skips applied: the scheduler replicas' shared
    cursor (a stale one would count the new schedule's past occurrences as missed)."""
    if trigger.kind != K.SCHEDULE or not trigger.enabled:
        trigger.next_fire_at = None
        return
    times = triggerflow.next_fire_times(trigger, now, 1, skip_day=await _skip_day(session, trigger))
    trigger.next_fire_at = times[0] if times else None


async def _skip_day(session: AsyncSession, trigger: Trigger) -> Any:
    if trigger.calendar_id is None:
        return None
    rule = (await triggerflow.load_calendars(session, [trigger.calendar_id])).get(trigger.calendar_id)
    return rule.is_non_working if rule is not None else None


def _audit_view(fields: dict[str, Any]) -> dict[str, Any]:
    # Argument values may hold anything, secrets included: the audit keeps their names.
    out = {k: v for k, v in fields.items() if k != "input_args"}
    if "input_args" in fields:
        out["input_arg_names"] = sorted(fields["input_args"] or {})
    return out


# CRUD --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Saved:
    trigger: Trigger
    secret: str | None = None


async def create_trigger(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    trigger_id: uuid.UUID,
    body: schemas.TriggerCreate,
    *,
    audit_kind: str = "api",
) -> Saved:
    existing = await session.get(Trigger, trigger_id)
    if existing is not None:
        return Saved(existing)  # a re-run after a commit that did happen
    fields = body.model_dump()
    await check_folder(session, principal, body.folder_id)
    await _check_references(session, principal, fields)
    if await name_taken(session, Trigger.name, body.name, Trigger.account_id == principal.account_id):
        raise Conflict(_taken(body.name), field="name")
    kind = body.kind
    trigger = Trigger(
        id=trigger_id,
        account_id=principal.account_id,
        name=body.name,
        description=body.description,
        folder_id=body.folder_id,
        kind=kind,
        enabled=body.enabled,
        process_id=body.process_id,
        robot_id=body.robot_id,
        robot_group_id=body.robot_group_id,
        priority=JobPriority(body.priority),
        input_args=dict(body.input_args),
        cron=body.cron,
        time_zone=body.time_zone,
        interval_s=body.interval_s,
        once_at=body.once_at,
        calendar_id=body.calendar_id,
        misfire_policy=MisfirePolicy(body.misfire_policy),
        misfire_grace_s=body.misfire_grace_s,
        queue_id=body.queue_id,
        min_tasks=body.min_tasks,
        max_jobs=body.max_jobs,
        jobs_per_tasks=body.jobs_per_tasks,
        webhook_auth=body.webhook_auth if kind == K.WEBHOOK else None,
        source_process_id=body.source_process_id,
        completion_states=list(body.completion_states) if kind == K.JOB_COMPLETED else [],
        config={},
    )
    check_rules(trigger)
    now = utcnow()
    trigger.created_at = trigger.updated_at = now
    await _schedule_cursor(session, trigger, now)
    secret = None
    if kind == K.WEBHOOK:
        secret = webhook.new_secret()
        await webhook.seal(session, settings, trigger, secret)
    session.add(trigger)
    await flush_or_conflict(session, _taken(body.name), "name")
    changes = _audit_view(body.model_dump(mode="json", exclude_defaults=False))
    record(session, principal, "create", "trigger", trigger.id, changes, kind=audit_kind)
    return Saved(trigger, secret)


async def update_trigger(
    session: AsyncSession, principal: Principal, trigger_id: uuid.UUID, body: schemas.TriggerUpdate
) -> Trigger:
    fields = body.model_dump(exclude_unset=True)
    require_not_null(fields, *schemas.TriggerUpdate.not_null)
    trigger = await get_trigger(session, principal, trigger_id, lock=True)
    await check_name_and_folder(session, principal, trigger, fields, "a trigger")
    await _check_references(session, principal, fields)
    if "priority" in fields:
        fields["priority"] = JobPriority(fields["priority"])
    if "misfire_policy" in fields:
        fields["misfire_policy"] = MisfirePolicy(fields["misfire_policy"])
    if "webhook_auth" in fields and trigger.kind != K.WEBHOOK:
        raise Unprocessable(
            f"webhook_auth is not a setting of a {trigger.kind} trigger", field="webhook_auth"
        )
    if "completion_states" in fields and trigger.kind != K.JOB_COMPLETED:
        raise Unprocessable(
            f"completion_states is not a setting of a {trigger.kind} trigger", field="completion_states"
        )
    if "robot_id" in fields and fields["robot_id"] is not None and "robot_group_id" not in fields:
        fields["robot_group_id"] = None  # a new robot replaces the group (and the other way round)
    if "robot_group_id" in fields and fields["robot_group_id"] is not None and "robot_id" not in fields:
        fields["robot_id"] = None
    if trigger.kind == K.SCHEDULE:
        # One of cron / interval_s / once_at replaces the others.
        given = [f for f in ("cron", "interval_s", "once_at") if fields.get(f) is not None]
        if len(given) == 1:
            for other in ("cron", "interval_s", "once_at"):
                fields.setdefault(other, None)
    changes = apply_patch(trigger, fields)
    if not changes:
        return trigger
    check_rules(trigger)
    now = utcnow()
    trigger.updated_at = now
    if _SCHEDULE_CHANGES & set(changes):
        await _schedule_cursor(session, trigger, now)
    await flush_or_conflict(session, _taken(trigger.name), "name")
    record(session, principal, "update", "trigger", trigger.id, _audit_view(changes))
    return trigger


async def delete_trigger(session: AsyncSession, principal: Principal, trigger_id: uuid.UUID) -> Trigger:
    trigger = await get_trigger(session, principal, trigger_id, lock=True)
    record(session, principal, "delete", "trigger", trigger.id, {"name": trigger.name, "kind": trigger.kind})
    await session.delete(trigger)
    await session.flush()
    return trigger


async def rotate_secret(
    session: AsyncSession, settings: Settings, principal: Principal, trigger_id: uuid.UUID
) -> str:
    trigger = await get_trigger(session, principal, trigger_id, lock=True)
    if trigger.kind != K.WEBHOOK:
        raise Conflict(f"a {trigger.kind} trigger has no webhook secret")
    secret = webhook.new_secret()
    await webhook.seal(session, settings, trigger, secret)
    trigger.updated_at = utcnow()
    await session.flush()
    record(session, principal, "rotate_secret", "trigger", trigger.id, {"webhook_secret": "rotated"})
    return secret


# Firing, preview, history ------------------------------------------------------------------------


async def fire(
    session: AsyncSession,
    trigger: Trigger,
    *,
    fire_key: str,
    input_args: dict[str, Any] | None = None,
    allow_disabled: bool = False,
) -> triggerflow.FireOutcome:
    """Fire ``trigger`` now under ``fire_key`` (the outcome's ``message`` is published after commit)."""
    return await triggerflow.fire(
        session,
        trigger,
        fire_key=fire_key,
        scheduled_at=utcnow(),
        input_args=input_args,
        allow_disabled=allow_disabled,
    )


async def test_fire(
    session: AsyncSession, principal: Principal, trigger_id: uuid.UUID, fire_id: uuid.UUID
) -> triggerflow.FireOutcome:
    trigger = await get_trigger(session, principal, trigger_id, lock=True)
    outcome = await fire(session, trigger, fire_key=f"test:{fire_id}", allow_disabled=True)
    record(
        session,
        principal,
        "test",
        "trigger",
        trigger.id,
        {"job_id": outcome.job_id, "created": outcome.created, "reason": outcome.reason},
    )
    return outcome


async def preview(trigger: Trigger, n: int, session: AsyncSession) -> list[datetime]:
    if trigger.kind != K.SCHEDULE:
        raise Conflict(f"a {trigger.kind} trigger has no schedule to preview")
    return triggerflow.next_fire_times(
        trigger, datetime.now(UTC), n, skip_day=await _skip_day(session, trigger)
    )


def fires_query(trigger: Trigger) -> Any:
    return (
        sa.select(
            TriggerFire.fire_key,
            TriggerFire.scheduled_at,
            TriggerFire.fired_at,
            TriggerFire.job_id,
            Job.state.label("job_state"),
            TriggerFire.result,
        )
        .outerjoin(Job, Job.id == TriggerFire.job_id)
        .where(TriggerFire.trigger_id == trigger.id)
    )


# CSV ---------------------------------------------------------------------------------------------

_NAMED_MODELS: dict[str, Any] = {
    "folder": None,  # AccessFolder, resolved apart (no folder of its own)
    "process": Process,
    "robot": Robot,
    "robot_group": RobotGroup,
    "queue": Queue,
    "calendar": Calendar,
    "source_process": Process,
}


async def _names(session: AsyncSession, model: Any, ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    if not ids:
        return {}
    rows = await session.execute(sa.select(model.id, model.name).where(model.id.in_(ids)))
    return {r.id: r.name for r in rows}


async def export_rows(session: AsyncSession, principal: Principal) -> list[dict[str, Any]]:
    from rpa_common.models import AccessFolder

    triggers = list((await session.execute(triggers_query(principal).order_by(Trigger.name))).scalars())
    maps: dict[str, dict[uuid.UUID, str]] = {}
    for column, (field, _) in csv_io.NAMED.items():
        model = AccessFolder if column == "folder" else _NAMED_MODELS[column]
        ids = {getattr(t, field) for t in triggers if getattr(t, field) is not None}
        maps[column] = await _names(session, model, ids)
    rows = []
    for t in triggers:
        row: dict[str, Any] = {c: getattr(t, c, None) for c in csv_io.COLUMNS if hasattr(Trigger, c)}
        row["priority"] = int(t.priority)
        for column, (field, _) in csv_io.NAMED.items():
            ident = getattr(t, field)
            row[column] = maps[column].get(ident) if ident is not None else None
        if t.kind != K.JOB_COMPLETED:
            row["completion_states"] = None
        rows.append(row)
    return rows


async def _resolve(session: AsyncSession, principal: Principal, row: csv_io.Row) -> dict[str, Any]:
    from rpa_common.models import AccessFolder

    body: dict[str, Any] = {}
    for column, value in row.values.items():
        if column not in csv_io.NAMED:
            body[column] = value
            continue
        field, kind = csv_io.NAMED[column]
        model: Any = AccessFolder if column == "folder" else _NAMED_MODELS[column]
        stmt = sa.select(model.id).where(
            model.account_id == principal.account_id, sa.func.lower(model.name) == value.lower()
        )
        if column != "folder":
            stmt = stmt.where(principal.folder_clause(model.folder_id))
        found = await session.scalar(stmt.limit(1))
        if found is None:
            raise csv_io.bad_line(row.line, column, f"no {kind} named {value!r}")
        body[field] = found
    return body


async def import_rows(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    rows: list[csv_io.Row],
    ids: list[uuid.UUID],
) -> list[Saved]:
    """Create a trigger per row, all or none: the first bad row is a 422 naming its line and column."""
    from pydantic import ValidationError

    from rpa_common.errors import DomainError

    saved: list[Saved] = []
    seen: set[str] = set()
    for row, trigger_id in zip(rows, ids, strict=True):
        body_fields = await _resolve(session, principal, row)
        try:
            body = schemas.TriggerCreate.model_validate(body_fields)
        except ValidationError as err:
            raise csv_io.validation_error(err, row.line) from None
        if body.name.lower() in seen:
            raise csv_io.bad_line(row.line, "name", f"the name {body.name!r} is given twice in the file")
        seen.add(body.name.lower())
        try:
            saved.append(
                await create_trigger(session, settings, principal, trigger_id, body, audit_kind="csv")
            )
        except DomainError as err:
            column = csv_io.FIELD_COLUMN.get(err.field or "", err.field)
            raise type(err)(
                f"line {row.line}"
                + (f", column {column!r}" if column else "")
                + f": {err.detail}; nothing was imported",
                field="file",
                line=row.line,
                column=column,
            ) from None
    return saved
