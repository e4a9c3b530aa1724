"""Protocol version, WebSocket close codes, error codes and capabilities of robot protocol v1."""

from __future__ import annotations

PROTOCOL_VERSION = 1
SUPPORTED_PROTOCOLS = frozenset({1})

# WebSocket close codes (4xxx: application codes). docs/robot-protocol.md 2.9 says what a robot does.
CLOSE_NORMAL = 1000
"""Normal close; also a robot that logged off after its one job (``exit_after_job``)."""
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
"""``hello`` missing or late, or too many bad frames."""
CLOSE_RESTART = 1012
"""The gateway is shutting down, or could not store a frame: reconnect (to another replica), replay."""
CLOSE_UNAUTHORIZED = 4401
"""The robot was deleted or its key rotated while connected."""
CLOSE_FORBIDDEN = 4403
"""The robot was deactivated while connected."""
CLOSE_STALE = 4408
"""The orchestrator marked the robot Disconnected (heartbeats missed) while the socket lived: reconnect."""
CLOSE_REPLACED = 4409
"""Another connection of the same robot took over."""
CLOSE_UNSUPPORTED = 4426
"""Unsupported protocol version."""

# ``code`` of an ``error`` frame.
ERROR_BAD_FRAME = "bad_frame"
"""Not JSON, not an object, binary, unknown type, a missing/unknown/wrong field, NUL or bad UTF-8."""
ERROR_NOT_ALLOWED = "not_allowed"
"""A valid frame this connection may not send (second hello, a capability it did not announce)."""
ERROR_UNSUPPORTED_PROTOCOL = "unsupported_protocol"
"""``hello.protocol`` is not one the gateway speaks; the connection closes with 4426."""
ERROR_HELLO_TIMEOUT = "hello_timeout"
"""No ``hello`` within ``HELLO_TIMEOUT_S``; the connection closes with 1008."""
ERROR_REJECTED = "rejected"
"""A well-formed frame the gateway could not apply for a reason of its own (it would fail again)."""
ERROR_CODES = (
    ERROR_BAD_FRAME,
    ERROR_NOT_ALLOWED,
    ERROR_UNSUPPORTED_PROTOCOL,
    ERROR_HELLO_TIMEOUT,
    ERROR_REJECTED,
)

HELLO_TIMEOUT_S = 10.0
BAD_FRAME_LIMIT = 5
"""More bad frames than this within ``BAD_FRAME_WINDOW_S`` close the connection (1008)."""
BAD_FRAME_WINDOW_S = 60.0

# Capabilities a robot announces in ``hello``; the gateway answers with those it grants in
# ``welcome.capabilities`` and ignores others (a newer robot learns what this gateway lacks).
CAPABILITY_JOBS = "jobs"
"""The robot's main connection: it takes jobs and sends ``job.status``."""
CAPABILITY_LOGS = "logs"
"""The connection sends ``log`` frames."""
CAPABILITY_JOB_REQUEST = "job.request"
"""The connection sends ``job.request`` frames."""
CAPABILITY_TASKS = "tasks"
"""The connection sends ``task.*`` frames (add, take, renew, progress, finish); main connections only."""
CAPABILITY_RESOURCES = "resources"
"""The connection sends ``resource.get``, ``resource.set`` and ``credential.get``; main connections only."""
KNOWN_CAPABILITIES = (
    CAPABILITY_JOBS,
    CAPABILITY_LOGS,
    CAPABILITY_JOB_REQUEST,
    CAPABILITY_TASKS,
    CAPABILITY_RESOURCES,
)

MAX_LOG_ENTRIES = 1000
MAX_MESSAGE_BYTES = 64 * 1024
"""A log line's ``message``, counted in UTF-8 bytes."""
MAX_ERROR_CHARS = 10_000

# Tasks and resources (docs/robot-protocol.md sections 2.12 to 2.14).
MAX_TASKS_PER_ADD = 1000
"""Tasks in one ``task.add`` frame (the orchestrator's ``RPA_TASK_BULK_MAX`` may allow fewer)."""
MAX_QUEUE_NAME_CHARS = 100
MAX_TASK_NAME_CHARS = 255
MAX_DESCRIPTION_CHARS = 1000
MAX_TAGS = 50
MAX_TAG_CHARS = 100
MAX_NOTE_CHARS = 1000
"""A ``task.progress`` note."""
MIN_LOCK_S = 5
MAX_LOCK_S = 86_400
"""Bounds of ``lock_s`` in ``task.take`` / ``task.renew`` (absent: the orchestrator's ``RPA_TASK_LOCK_S``)."""
MAX_RESOURCE_NAME_CHARS = 100
MAX_WATCHES = 100
"""Resource names one connection may watch (``resource.get`` with ``watch``)."""
MAX_TEXT_VALUE_BYTES = 65_535
"""A Text resource value set by a robot, counted in UTF-8 bytes (what a MariaDB ``TEXT`` holds)."""

# ``error.code`` in a reply frame (``task.added``, ``task.taken``, ``resource.value``...): the
# request was well-formed but refused; nothing was changed.
REPLY_ERROR_CODES = (
    "queue_not_found",
    "task_not_found",
    "duplicate_name",
    "too_many",
    "invalid",
    "stale_token",
    "not_in_progress",
    "resource_not_found",
    "wrong_kind",
    "not_allowed",
    "unreadable",
)
