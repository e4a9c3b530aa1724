"""Request and response bodies of the jobs API.

Request bodies reject unknown fields (``extra="forbid"``): a misspelt ``priorty`` is a 422 naming
it, never a silently ignored wish.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rpa_common.errors import PayloadTooLarge, Unprocessable
from rpa_common.models.enums import ActorType, JobSource, JobState, LogLevel

# A deadline longer than a year is a typo, and the column is a 32-bit integer on both databases.
MAX_DURATION_S = 366 * 24 * 3600

DurationS = Annotated[
    int, Field(gt=0, le=MAX_DURATION_S, description="Seconds, counted from the job's start")
]


class JobCreate(BaseModel):
    """``POST /jobs``: a process (version) on one robot or on any robot of a group."""

    model_config = ConfigDict(extra="forbid")

    process_id: uuid.UUID
    process_version_id: uuid.UUID | None = Field(
        None, description="A version of the process; default: its current version"
    )
    # Exactly one of robot_id and robot_group_id (check()); said in words, not as a oneOf, which
    # would make generated clients lose this model's fields.
    robot_id: uuid.UUID | None = Field(
        None, description="Run on this robot (give exactly one of robot_id and robot_group_id)"
    )
    robot_group_id: uuid.UUID | None = Field(None, description="Run on any free robot of this group")
    input_args: dict[str, Any] = Field(default_factory=dict, description="Input arguments (a JSON object)")
    priority: int = Field(2, ge=1, le=3, description="1 low, 2 normal, 3 high")
    stop_after_s: DurationS | None = Field(None, description="Ask the script to stop after this long")
    interrupt_after_s: DurationS | None = Field(None, description="Kill the script after this long")
    max_retries: int = Field(0, ge=0, le=10, description="Re-runs when the robot is lost")

    def check(self, max_json_bytes: int) -> None:
        """Rules across fields, each a 422 naming the fields concerned."""
        if (self.robot_id is None) == (self.robot_group_id is None):
            detail = "give exactly one of robot_id and robot_group_id"
            raise Unprocessable(
                detail,
                errors=[
                    {"field": "robot_id", "message": detail},
                    {"field": "robot_group_id", "message": detail},
                ],
            )
        if (
            self.stop_after_s is not None
            and self.interrupt_after_s is not None
            and self.interrupt_after_s < self.stop_after_s
        ):
            raise Unprocessable(
                "interrupt_after_s must not be shorter than stop_after_s", field="interrupt_after_s"
            )
        try:
            # Python's JSON reader accepts NaN and Infinity; no database JSON column does.
            size = len(json.dumps(self.input_args, allow_nan=False, ensure_ascii=False).encode())
        except ValueError:
            raise Unprocessable(
                "input_args must be plain JSON (no NaN or Infinity)", field="input_args"
            ) from None
        if size > max_json_bytes:
            raise PayloadTooLarge(f"input_args exceed {max_json_bytes} bytes", field="input_args")

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the validated request: equal requests, equal hashes.

        Defaults are filled in first, so ``{"priority": 2}`` and no priority are the same request.
        """
        canonical = json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    process_id: uuid.UUID
    process_version_id: uuid.UUID
    robot_id: uuid.UUID | None
    robot_group_id: uuid.UUID | None
    task_id: uuid.UUID | None
    trigger_id: uuid.UUID | None
    parent_job_id: uuid.UUID | None
    state: JobState
    priority: int
    source: JobSource
    input_args: dict[str, Any]
    output_args: dict[str, Any] | None
    error: str | None
    stop_after_s: int | None
    interrupt_after_s: int | None
    stop_at: datetime | None
    interrupt_at: datetime | None
    attempt: int
    max_retries: int
    created_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    ended_at: datetime | None


class JobEventOut(BaseModel):
    """One transition of the job's history."""

    model_config = ConfigDict(from_attributes=True)

    from_state: JobState | None
    to_state: JobState
    at: datetime
    actor_type: ActorType
    actor_id: uuid.UUID | None
    reason: str | None
    attempt: int


class JobDetail(JobOut):
    history: list[JobEventOut]


class JobLogOut(BaseModel):
    """One log line a robot sent while running the job."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    at: datetime
    level: str
    message: str
    fields: dict[str, Any] | None
    robot_id: uuid.UUID | None
    task_id: uuid.UUID | None

    @field_validator("level", mode="before")
    @classmethod
    def _level_name(cls, value: Any) -> str:
        return LogLevel(value).name.capitalize() if not isinstance(value, str) else value


class RobotStateOut(BaseModel):
    """A robot as the dispatcher sees it (a member of the job's group)."""

    robot_id: uuid.UUID
    name: str
    status: str
    is_active: bool
    busy_with_job_id: uuid.UUID | None = Field(None, description="The job this robot is busy with")
    status_reason: str | None = Field(None, description="Why it is Unlicensed")


class ExplainReason(BaseModel):
    """One reason, as a stable ``code`` (docs/api-guide.md, "Why is this job pending?"), a sentence,
    and the fields it names (only those that apply are present)."""

    code: str = Field(description="Stable snake_case code, e.g. `robot_busy`, `session_limit_reached`")
    message: str
    robot_id: uuid.UUID | None = None
    robot_name: str | None = None
    robot_status: str | None = None
    robot_group_id: uuid.UUID | None = None
    busy_with_job_id: uuid.UUID | None = Field(None, description="`robot_busy`: the job holding the robot")
    status_reason: str | None = None
    license_kinds: str | None = None
    license_capacity: int | None = None
    license_in_use: int | None = None
    terminal_server_id: uuid.UUID | None = None
    coordinator_id: uuid.UUID | None = None
    live_sessions: int | None = None
    max_sessions: int | None = None
    session_id: uuid.UUID | None = None
    session_state: str | None = None
    jobs_ahead: int | None = Field(None, description="`queued`: Pending jobs that go first")
    since: datetime | None = None
    robots: list[RobotStateOut] | None = Field(None, description="`no_robot_ready`: the group's robots")


class JobExplain(BaseModel):
    """``GET /jobs/{id}/explain``: what the job waits for, in words and in fields."""

    job_id: uuid.UUID
    state: JobState
    waiting: bool = Field(description="True while the job has not started running (Pending or Starting)")
    reasons: list[ExplainReason]
