"""What the dispatcher asks of a robot and a terminal server before it hands out a job.

The scheduler's dispatcher (``rpa_scheduler.dispatch``) decides with these; the API's
``GET /jobs/{id}/explain`` reads the same rows with the same rules to say why a job still waits.
Services never import each other, so the rules both need live here.
"""

from __future__ import annotations

from rpa_common.models.enums import RobotStatus, SessionState

CONNECTED_STATUSES = (RobotStatus.READY, RobotStatus.WORKING)
"""A robot is connected when a gateway holds it (and ``gateway_id`` is set). Working with no current
job is the short moment between the end of a job and the gateway's next status update: it may take
work too."""

LIVE_SESSION_STATES = (
    SessionState.REQUESTED,
    SessionState.CONNECTING,
    SessionState.LOGGED_ON,
    SessionState.ROBOT_CONNECTED,
    SessionState.LOGGING_OFF,
)
"""Sessions that occupy a seat on their terminal server (``max_sessions``)."""
