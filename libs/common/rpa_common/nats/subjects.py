"""Every NATS subject of the product, named once. No other module spells a subject string.

Subjects are commands or events; none of them is ever the only copy of anything that must not be
lost: consumers also recover from the database on reconnect and on a periodic sweep.
"""

from __future__ import annotations

import uuid

PREFIX = "rpa"

# Events (published after the transaction that caused them commits).
JOB_CREATED = f"{PREFIX}.job.created"
"""A job was created (or became dispatchable again): schedulers wake their dispatcher."""
JOB_STATE = f"{PREFIX}.job.state"
"""A job changed state: chained triggers, statistics, queue task fail-over listen."""
JOB_CONTROL = f"{PREFIX}.job.control"
"""A person asked a job to stop (soft) or interrupt (hard); the gateway holding its robot relays it."""
ROBOT_STATUS = f"{PREFIX}.robot.status"
"""A robot's status changed (Disconnected / Ready / Working / Unlicensed)."""
ROBOT_CHANGED = f"{PREFIX}.robot.changed"
"""A robot was deactivated, deleted or got a new key: its gateway closes its connection."""
TRIGGER_CHANGED = f"{PREFIX}.trigger.changed"
"""A trigger was created, changed or deleted: schedulers reload it."""
SESSION_STATE = f"{PREFIX}.session.state"
"""A coordinator reports the state of a terminal session."""
AUTH_CHANGED = f"{PREFIX}.auth.changed"
"""Users, roles, folders or API keys of an account changed: API replicas drop cached grants."""
RESOURCE_CHANGED = f"{PREFIX}.resource.changed"
"""A person changed a resource or one of its values (never carries a value or a secret): gateways
re-resolve the resource for the robots watching it and push the new value."""

# Queue groups: one member of the group handles each message.
SCHEDULER_QUEUE = "scheduler"
GATEWAY_QUEUE = "gateway"


def gateway_inbox(gateway_id: str) -> str:
    """Commands for one gateway replica (the one holding the robot's connection)."""
    return f"{PREFIX}.gateway.{gateway_id}.cmd"


def coordinator_inbox(coordinator_id: uuid.UUID | str) -> str:
    """Commands for the coordinator serving a terminal server (open/close session)."""
    return f"{PREFIX}.coordinator.{coordinator_id}.cmd"


ALL_GATEWAYS = f"{PREFIX}.gateway.*.cmd"
