"""Request and response bodies of queues and tasks."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StrictBool, StringConstraints

from rpa_api.kit.schemas import Description, In, Name, Out, Patch
from rpa_common.models.enums import ActorType, TaskEventKind, TaskPriority, TaskState


def _json_integer(value: Any) -> Any:
    # A JSON integer: 5 or 5.0 (JSON Schema's integer), never true/false nor "5".
    if isinstance(value, bool | str):
        raise ValueError("must be an integer")
    return value


NotBoolOrText = BeforeValidator(_json_integer)
# The constraints come before the validator, so that they stay JSON Schema's minimum and maximum.

# A timeout longer than a year is a typo; the columns are 32-bit integers on both databases.
MAX_TIMEOUT_S = 366 * 24 * 3600

TimeoutS = Annotated[int, Field(ge=1, le=MAX_TIMEOUT_S, description="Seconds"), NotBoolOrText]
MaxRetries = Annotated[int, Field(ge=0, le=100, description="Retries of a task (0: none)"), NotBoolOrText]
TaskName = Annotated[str, StringConstraints(min_length=1, max_length=255), Field(description="Not blank")]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=100), Field(description="Not blank")]


def _iso_only(value: Any) -> Any:
    # pydantic reads a number as seconds since 1970; the schema promises an ISO 8601 date-time.
    if isinstance(value, int | float) or (
        isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit()
    ):
        raise ValueError("must be an ISO 8601 date-time, e.g. 2026-05-01T12:00:00Z")
    return value


Time = Annotated[
    datetime,
    BeforeValidator(_iso_only),
    Field(description="ISO 8601 (UTC when no zone is given), between the years 1900 and 9999"),
]
Tags = Annotated[list[Tag], Field(max_length=50, description="Labels to filter by (at most 50)")]
Priority = Annotated[int, Field(ge=1, le=3, description="1 low, 2 normal, 3 high"), NotBoolOrText]
Comment = Annotated[str, StringConstraints(max_length=1000)]
Reason = Annotated[str, StringConstraints(max_length=1000)]


class _QueueSettings(In):
    created_abandon_s: TimeoutS | None = Field(
        None, description="A task still Created this long after it was added is Abandoned (none: never)"
    )
    in_progress_abandon_s: TimeoutS | None = Field(
        None, description="A task still In Progress this long after it was taken is Abandoned (none: never)"
    )


class QueueCreate(_QueueSettings):
    name: Name
    description: Description = ""
    folder_id: uuid.UUID | None = None
    max_retries: MaxRetries = 0
    fail_on_job_failed: StrictBool = Field(
        True, description="Fail In Progress tasks when their job ends Failed"
    )
    fail_on_job_stopped: StrictBool = Field(
        True, description="Fail In Progress tasks when their job ends Stopped"
    )
    fail_on_job_interrupted: StrictBool = Field(
        True, description="Fail In Progress tasks when their job ends Interrupted"
    )
    retry_failed_application: StrictBool = Field(
        True, description="Retry tasks that end Failed (Application)"
    )
    retry_failed_business: StrictBool = Field(False, description="Retry tasks that end Failed (Business)")
    retry_abandoned: StrictBool = Field(False, description="Retry tasks that are Abandoned")
    unique_task_names: StrictBool = Field(
        False, description="Refuse a task whose name another task of the queue holds (409)"
    )


class QueueUpdate(Patch, _QueueSettings):
    not_null = (
        "name",
        "description",
        "max_retries",
        "fail_on_job_failed",
        "fail_on_job_stopped",
        "fail_on_job_interrupted",
        "retry_failed_application",
        "retry_failed_business",
        "retry_abandoned",
        "unique_task_names",
    )

    name: Name | None = None
    description: Description | None = None
    folder_id: uuid.UUID | None = None
    max_retries: MaxRetries | None = None
    fail_on_job_failed: StrictBool | None = None
    fail_on_job_stopped: StrictBool | None = None
    fail_on_job_interrupted: StrictBool | None = None
    retry_failed_application: StrictBool | None = None
    retry_failed_business: StrictBool | None = None
    retry_abandoned: StrictBool | None = None
    unique_task_names: StrictBool | None = Field(
        None, description="May be turned on only while the queue has no tasks (409 otherwise)"
    )


class QueueOut(Out):
    id: uuid.UUID
    name: str
    description: str
    folder_id: uuid.UUID | None
    created_abandon_s: int | None
    in_progress_abandon_s: int | None
    max_retries: int
    fail_on_job_failed: bool
    fail_on_job_stopped: bool
    fail_on_job_interrupted: bool
    retry_failed_application: bool
    retry_failed_business: bool
    retry_abandoned: bool
    unique_task_names: bool
    created_at: datetime
    updated_at: datetime


class QueueStats(Out):
    """What a dashboard shows of a queue."""

    queue_id: uuid.UUID
    at: datetime = Field(description="When these figures were read")
    counts: dict[str, int] = Field(description="Tasks by state (every state named, 0 included)")
    window_s: int = Field(description="The window of the figures below, in seconds up to `at`")
    ended: int = Field(description="Tasks that ended (Successful, Failed, Abandoned) in the window")
    successful: int = Field(description="Tasks that ended Successful in the window")
    throughput_per_min: float = Field(description="Tasks ended per minute over the window")
    mean_processing_s: float | None = Field(
        description="Mean time from take to end of the tasks robots ended in the window (none: no such task)"
    )
    oldest_waiting_at: datetime | None = Field(description="When the oldest Created task was added")
    oldest_waiting_age_s: float | None = Field(description="Its age in seconds at `at`")


# Tasks -------------------------------------------------------------------------------------------


class TaskCreate(In):
    name: TaskName
    description: Description = ""
    parameters: dict[str, Any] = Field(default_factory=dict, description="Named values for the robot")
    priority: Priority = int(TaskPriority.NORMAL)
    tags: Tags = Field(default_factory=list)
    deadline: Time | None = Field(None, description="Overdue tasks are taken first")
    delay_until: Time | None = Field(None, description="Postponed until then; robots take it afterwards")


class TasksCreate(In):
    tasks: list[TaskCreate] = Field(
        min_length=1, description="The tasks to add; at most RPA_TASK_BULK_MAX (413 beyond)"
    )


class TaskUpdate(Patch):
    """A person's change of a task. Data fields change only while the task waits (Created, Postponed);
    ``description`` and ``comment`` at any time; ``state`` as docs/api-guide.md's table allows."""

    not_null = ("name", "description", "comment", "parameters", "priority", "tags", "state")

    name: TaskName | None = None
    description: Description | None = None
    comment: Comment | None = None
    parameters: dict[str, Any] | None = None
    priority: Priority | None = None
    tags: Tags | None = None
    deadline: Time | None = None
    delay_until: Time | None = Field(
        None,
        description="On a waiting task: a future time postpones it, null or a past time makes it Created",
    )
    state: TaskState | None = Field(None, description="The new state (see the allowed changes)")
    reason: Reason | None = Field(None, description="Why: kept in the history (and as a failure's error)")


class TaskRetry(In):
    reason: Reason | None = None


class TaskOut(Out):
    id: uuid.UUID
    queue_id: uuid.UUID
    name: str
    description: str
    comment: str
    parameters: dict[str, Any]
    priority: TaskPriority
    tags: list[str]
    state: TaskState
    delay_until: datetime | None
    deadline: datetime | None
    retry_number: int
    retry_of_id: uuid.UUID | None
    output: dict[str, Any] | None
    error: str | None
    progress: str | None
    lock_robot_id: uuid.UUID | None
    lock_job_id: uuid.UUID | None
    lock_expires_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    created_at: datetime
    updated_at: datetime


class TaskEventOut(Out):
    """One entry of a task's history."""

    at: datetime
    kind: TaskEventKind
    from_state: TaskState | None
    to_state: TaskState | None
    actor_type: ActorType
    actor_id: uuid.UUID | None
    note: str | None
    related_task_id: uuid.UUID | None = Field(description="The retry made, or the task retried")


class TaskDetail(TaskOut):
    retried_by_id: uuid.UUID | None = Field(description="The task that retries this one, if any")
    history: list[TaskEventOut]


class TasksAdded(Out):
    added: int
    items: list[TaskOut]


class CsvAdded(Out):
    added: int = Field(description="Tasks added (every row of the file)")
