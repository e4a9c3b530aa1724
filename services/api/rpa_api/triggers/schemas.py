"""Request and response bodies of triggers.

One shape for every kind: the fields of the other kinds stay null (or at their defaults). Rules
across fields (which fields a kind needs, exactly one target...) are checked by the service on the
merged trigger, so a PATCH is held to the same rules as a POST; each is a 422 naming the field.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field, StrictBool

from rpa_api.calendars.schemas import TimeZone
from rpa_api.kit.schemas import Description, In, Name, Out, Patch
from rpa_common.models.enums import JobState, TriggerKind

Priority = Annotated[
    int, Field(ge=1, le=3, description="Priority of the jobs it creates: 1 low, 2 normal, 3 high")
]
Cron = Annotated[
    str,
    Field(
        min_length=1,
        max_length=120,
        description="A standard five-field cron (minute hour day month weekday; weekday 0 or 7 = Sunday)",
    ),
]
IntervalS = Annotated[int, Field(ge=1, le=366 * 24 * 3600, description="Seconds between two fires")]
MisfirePolicy = Literal["skip", "fire_once"]
WebhookAuth = Literal["hmac", "secret"]
FinalState = Literal["Successful", "Failed", "Stopped", "Interrupted"]

_TARGET = (
    "Jobs run on this robot (give exactly one of robot_id and robot_group_id; a robot command trigger "
    "may give neither: its jobs then run on the robot that asks)"
)


class _Common(In):
    description: Description = ""
    folder_id: uuid.UUID | None = None
    enabled: StrictBool = True
    priority: Priority = 2
    input_args: dict[str, Any] = Field(
        default_factory=dict, description="Input arguments of the jobs it creates"
    )
    robot_id: uuid.UUID | None = Field(None, description=_TARGET)
    robot_group_id: uuid.UUID | None = Field(None, description="Jobs run on any free robot of this group")
    # schedule
    cron: Cron | None = Field(
        None, description="Schedule: a cron in time_zone (one of cron, interval_s, once_at)"
    )
    time_zone: TimeZone = "UTC"
    interval_s: IntervalS | None = Field(None, description="Schedule: every this many seconds")
    once_at: AwareDatetime | None = Field(None, description="Schedule: once, at this time")
    calendar_id: uuid.UUID | None = Field(None, description="Schedule: skip this calendar's non-working days")
    misfire_policy: MisfirePolicy = Field(
        "fire_once",
        description="Schedule: an occurrence missed (scheduler down) is skipped, or fired once if late by at most misfire_grace_s",
    )
    misfire_grace_s: int = Field(300, ge=0, le=7 * 24 * 3600, description="Schedule: see misfire_policy")
    # queue
    queue_id: uuid.UUID | None = Field(
        None, description="Queue: start jobs while this queue has waiting tasks"
    )
    min_tasks: int = Field(1, ge=1, le=1_000_000, description="Queue: waiting tasks before the first job")
    max_jobs: int = Field(1, ge=1, le=1000, description="Queue: most jobs of this trigger at once")
    jobs_per_tasks: int = Field(
        1, ge=1, le=1_000_000, description="Queue: one job per this many waiting tasks"
    )
    # webhook
    webhook_auth: WebhookAuth = Field(
        "hmac",
        description="Webhook: 'hmac' (X-RPA-Timestamp + X-RPA-Signature of the body) or 'secret' (X-RPA-Trigger-Secret)",
    )
    # job completion
    source_process_id: uuid.UUID | None = Field(
        None, description="Job completion: when a job of this process ends in completion_states"
    )
    completion_states: list[FinalState] = Field(
        default_factory=lambda: list[FinalState](["Successful"]),
        max_length=4,
        description="Job completion: the final states that fire",
    )


class TriggerCreate(_Common):
    name: Name
    kind: TriggerKind
    process_id: uuid.UUID = Field(description="The process its jobs run")


class TriggerUpdate(Patch):
    not_null = (
        "name",
        "description",
        "enabled",
        "priority",
        "input_args",
        "process_id",
        "time_zone",
        "misfire_policy",
        "misfire_grace_s",
        "min_tasks",
        "max_jobs",
        "jobs_per_tasks",
        "webhook_auth",
        "completion_states",
    )

    name: Name | None = None
    description: Description | None = None
    folder_id: uuid.UUID | None = None
    enabled: StrictBool | None = None
    priority: Priority | None = None
    input_args: dict[str, Any] | None = None
    process_id: uuid.UUID | None = None
    robot_id: uuid.UUID | None = None
    robot_group_id: uuid.UUID | None = None
    cron: Cron | None = None
    time_zone: TimeZone | None = None
    interval_s: IntervalS | None = None
    once_at: AwareDatetime | None = None
    calendar_id: uuid.UUID | None = None
    misfire_policy: MisfirePolicy | None = None
    misfire_grace_s: int | None = Field(None, ge=0, le=7 * 24 * 3600)
    queue_id: uuid.UUID | None = None
    min_tasks: int | None = Field(None, ge=1, le=1_000_000)
    max_jobs: int | None = Field(None, ge=1, le=1000)
    jobs_per_tasks: int | None = Field(None, ge=1, le=1_000_000)
    webhook_auth: WebhookAuth | None = None
    source_process_id: uuid.UUID | None = None
    completion_states: list[FinalState] | None = Field(None, max_length=4)


class TriggerOut(Out):
    id: uuid.UUID
    name: str
    description: str
    kind: TriggerKind
    folder_id: uuid.UUID | None
    enabled: bool
    process_id: uuid.UUID
    robot_id: uuid.UUID | None
    robot_group_id: uuid.UUID | None
    priority: int
    input_args: dict[str, Any]
    cron: str | None
    time_zone: str
    interval_s: int | None
    once_at: datetime | None
    calendar_id: uuid.UUID | None
    misfire_policy: str
    misfire_grace_s: int
    queue_id: uuid.UUID | None
    min_tasks: int
    max_jobs: int
    jobs_per_tasks: int
    webhook_auth: str | None
    source_process_id: uuid.UUID | None
    completion_states: list[str] | None
    last_fired_at: datetime | None = Field(description="When it last fired (or decided not to)")
    last_job_id: uuid.UUID | None = Field(description="The job its last fire created, if any")
    last_result: str | None = Field(description="What its last fire did: the job created, or why none")
    next_fire_at: datetime | None = Field(description="Schedule: its next occurrence (null for other kinds)")
    created_at: datetime
    updated_at: datetime


class TriggerCreated(TriggerOut):
    webhook_secret: str | None = Field(
        None, description="Webhook: its secret, shown only in this answer (and on rotation)"
    )


class WebhookSecret(Out):
    webhook_secret: str = Field(description="The new secret, shown only here; the old one stops working")


class FireOut(Out):
    job_id: uuid.UUID | None = Field(description="The job this fire created, or null")
    created: bool = Field(description="Whether this call created the job (false: created before, or none)")
    reason: str | None = Field(description="Why no job was created, if none was")


class FireRecord(Out):
    fire_key: str = Field(description="The occurrence's identity: one job per key")
    scheduled_at: datetime | None
    fired_at: datetime
    job_id: uuid.UUID | None
    job_state: JobState | None
    result: str | None = Field(description="The job created, or why none was")


class Preview(Out):
    fire_times: list[datetime] = Field(description="The next occurrences, calendar skips applied, in UTC")


class ImportedTrigger(Out):
    id: uuid.UUID
    name: str
    webhook_secret: str | None = Field(None, description="A webhook trigger's secret, shown only here")


class Imported(Out):
    added: int
    items: list[ImportedTrigger]
