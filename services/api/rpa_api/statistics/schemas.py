"""What the statistics endpoints answer: the range and its buckets, then one row per bucket and group."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import Field

from rpa_api.kit.schemas import Out

Bucket = Literal["hour", "day"]
Group = Literal["process", "robot"]


class Range(Out):
    from_: datetime = Field(serialization_alias="from", description="Start of the range (included)")
    to: datetime = Field(description="End of the range (excluded)")
    bucket: Bucket
    buckets: list[datetime] = Field(
        description="Start of every bucket, in order: UTC hours or days; the first and the last cover "
        "only their part inside the range"
    )


class JobStateRow(Out):
    bucket: datetime = Field(description="Start of the bucket the jobs were created in")
    process_id: uuid.UUID | None = Field(description="The process (group=process)")
    robot_id: uuid.UUID | None = Field(description="The robot (group=robot; null: not placed on a robot yet)")
    counts: dict[str, int] = Field(description="Jobs by their state now (states with none left out)")
    total: int


class JobStates(Range):
    group: Group
    rows: list[JobStateRow] = Field(description="Buckets and groups with at least one job")


class SuccessRow(Out):
    bucket: datetime
    process_id: uuid.UUID | None
    robot_id: uuid.UUID | None
    finished: int = Field(description="Jobs created in the bucket that are in a final state")
    successful: int = Field(description="Of those, the Successful ones")
    success_rate: float = Field(description="successful / finished")


class SuccessRates(Range):
    group: Group
    rows: list[SuccessRow] = Field(description="Buckets and groups with at least one finished job")


class DurationRow(Out):
    bucket: datetime
    process_id: uuid.UUID | None
    robot_id: uuid.UUID | None
    jobs: int = Field(description="Jobs created in the bucket that started and ended")
    p50_s: float = Field(description="Median of their run time (end - start), seconds, interpolated")
    p95_s: float = Field(description="95th percentile of their run time, seconds, interpolated")


class Durations(Range):
    group: Group
    rows: list[DurationRow] = Field(description="Buckets and groups with at least one ended job")


class UtilisationRow(Out):
    bucket: datetime
    robot_id: uuid.UUID
    connected_s: float = Field(description="Seconds of the bucket the robot was connected (any status)")
    working_s: float = Field(description="Seconds of the bucket the robot was Working")
    utilisation: float = Field(description="working_s / connected_s")


class Utilisation(Range):
    rows: list[UtilisationRow] = Field(description="Buckets and robots with some time connected")


class QueueRow(Out):
    bucket: datetime
    queue_id: uuid.UUID
    added: int = Field(description="Tasks added in the bucket (retries included)")
    ended: int = Field(description="Tasks that reached a final state in the bucket (throughput)")
    successful: int = Field(description="Of those, the Successful ones")
    backlog: int = Field(description="Tasks waiting (Created or Postponed) at the end of the bucket")


class QueueFigures(Range):
    rows: list[QueueRow] = Field(
        description="Every bucket of each queue with tasks added or ended in the range, or waiting"
    )
