"""Every state, kind and level of the domain, named once."""

from __future__ import annotations

import enum


class RobotRole(enum.StrEnum):
    ATTENDED = "attended"
    UNATTENDED = "unattended"
    COORDINATOR = "coordinator"


class RobotStatus(enum.StrEnum):
    DISCONNECTED = "Disconnected"
    READY = "Ready"
    WORKING = "Working"
    UNLICENSED = "Unlicensed"


class JobState(enum.StrEnum):
    PENDING = "Pending"
    STARTING = "Starting"
    RUNNING = "Running"
    STOPPING = "Stopping"
    INTERRUPTING = "Interrupting"
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    STOPPED = "Stopped"
    INTERRUPTED = "Interrupted"

    @property
    def is_final(self) -> bool:
        return self in FINAL_JOB_STATES


FINAL_JOB_STATES = frozenset({JobState.SUCCESSFUL, JobState.FAILED, JobState.STOPPED, JobState.INTERRUPTED})
ACTIVE_JOB_STATES = frozenset({JobState.STARTING, JobState.RUNNING, JobState.STOPPING, JobState.INTERRUPTING})


class JobPriority(enum.IntEnum):
    LOW = 1
    NORMAL = 2
    HIGH = 3


class JobSource(enum.StrEnum):
    API = "api"
    TRIGGER = "trigger"
    ROBOT = "robot"
    CHAIN = "chain"


class ActorType(enum.StrEnum):
    USER = "user"
    API_KEY = "api_key"
    ROBOT = "robot"
    SYSTEM = "system"
    TRIGGER = "trigger"
    EXTERNAL_APP = "external_app"


class TriggerKind(enum.StrEnum):
    SCHEDULE = "schedule"
    QUEUE = "queue"
    WEBHOOK = "webhook"
    ROBOT = "robot"
    JOB_COMPLETED = "job_completed"


class MisfirePolicy(enum.StrEnum):
    """What a schedule does with an occurrence missed (all replicas down, stalled) past the tolerance."""

    SKIP = "skip"
    FIRE_ONCE = "fire_once"
    """The latest missed occurrence fires once if it is no older than the trigger's grace time."""


class TaskState(enum.StrEnum):
    CREATED = "Created"
    IN_PROGRESS = "In Progress"
    SUCCESSFUL = "Successful"
    FAILED_APPLICATION = "Failed (Application)"
    FAILED_BUSINESS = "Failed (Business)"
    POSTPONED = "Postponed"
    ABANDONED = "Abandoned"


FINAL_TASK_STATES = frozenset(
    {TaskState.SUCCESSFUL, TaskState.FAILED_APPLICATION, TaskState.FAILED_BUSINESS, TaskState.ABANDONED}
)


class TaskEventKind(enum.StrEnum):
    """What an entry of a task's history records."""

    CREATED = "created"
    STATE = "state"
    PROGRESS = "progress"
    RETRIED = "retried"
    EDITED = "edited"


class TaskPriority(enum.IntEnum):
    LOW = 1
    NORMAL = 2
    HIGH = 3


class ResourceKind(enum.StrEnum):
    TEXT = "text"
    CREDENTIALS = "credentials"
    CALENDAR = "calendar"


class ResourceScope(enum.StrEnum):
    ALL = "all"
    ROBOT_GROUP = "robot_group"
    ROBOT = "robot"


class LogLevel(enum.IntEnum):
    DEBUG = 10
    INFO = 20
    WARNING = 30
    ERROR = 40
    CRITICAL = 50


class LicenseKind(enum.StrEnum):
    ATTENDED = "Attended"
    UNATTENDED = "Unattended"
    ORCHESTRATOR = "Orchestrator"
    ATTENDED_FLOATING = "Attended Floating"


class SessionState(enum.StrEnum):
    """A terminal session's life (the coordinator reports each step; the scheduler stores them)."""

    REQUESTED = "requested"
    """Written by the scheduler with the OpenSession command."""
    CONNECTING = "connecting"
    """The coordinator started the client (or the robot process)."""
    LOGGED_ON = "logged_on"
    """The account is logged on: the robot started in the session and took its credentials."""
    ROBOT_CONNECTED = "robot_connected"
    """The robot is connected to a gateway."""
    LOGGING_OFF = "logging_off"
    """The coordinator is ending the session (job ended, interrupt, close command)."""
    ENDED = "ended"
    """The session is over (the robot logged off after its job, or it was logged off)."""
    FAILED = "failed"
    """The session could not be used; ``reason`` says why."""

    @property
    def is_final(self) -> bool:
        return self in (SessionState.ENDED, SessionState.FAILED)


class ShellMode(enum.StrEnum):
    """How the robot starts in a terminal session."""

    COMMAND = "command"
    """The RDP alternate shell runs the robot's command; the session ends when it exits."""
    STARTUP = "startup"
    """The account's own session start-up starts the robot (set up on the server)."""


class PermissionObject(enum.StrEnum):
    ACCOUNTS = "accounts"
    USERS = "users"
    ROLES = "roles"
    FOLDERS = "folders"
    API_KEYS = "api_keys"
    ROBOTS = "robots"
    ROBOT_GROUPS = "robot_groups"
    TERMINAL_SERVERS = "terminal_servers"
    PROCESSES = "processes"
    JOBS = "jobs"
    TRIGGERS = "triggers"
    WEBHOOKS = "webhooks"
    QUEUES = "queues"
    TASKS = "tasks"
    RESOURCES = "resources"
    CREDENTIALS = "credentials"
    CALENDARS = "calendars"
    LOGS = "logs"
    AUDIT = "audit"
    LICENSES = "licenses"
    STATISTICS = "statistics"


class PermissionAction(enum.StrEnum):
    READ = "read"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    RUN = "run"
    REVEAL = "reveal"
