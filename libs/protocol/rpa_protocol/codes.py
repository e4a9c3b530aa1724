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
KNOWN_CAPABILITIES = (CAPABILITY_JOBS, CAPABILITY_LOGS, CAPABILITY_JOB_REQUEST)

MAX_LOG_ENTRIES = 1000
MAX_MESSAGE_BYTES = 64 * 1024
"""A log line's ``message``, counted in UTF-8 bytes."""
MAX_ERROR_CHARS = 10_000
