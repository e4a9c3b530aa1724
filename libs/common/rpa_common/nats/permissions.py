"""Who may publish and subscribe to what on NATS: one user per service, least privilege.

NATS runs with these users in the compose layouts (``deploy/nats/``); each service connects with its
own (``RPA_NATS_USER`` and ``RPA_NATS_PASSWORD`` or ``RPA_NATS_PASSWORD_FILE``). A service may
publish only the subjects it produces and subscribe only to those it consumes, so a compromised
gateway cannot, say, order a coordinator to open a session, and nothing can publish as the
scheduler but the scheduler. Robots never reach NATS: they speak to the gateway only.

The tables below are the contract; ``tests/test_nats_permissions.py`` proves them against a real
nats-server and checks that every subject of ``rpa_common.nats.subjects`` has a publisher here, so
a new subject cannot ship without its permission. ``python -m rpa_common.nats.permissions`` prints
the server's ``authorization`` block (passwords as ``$NATS_PASSWORD_<USER>`` variables that
nats-server reads from its environment).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rpa_common import events
from rpa_common.nats import subjects

ANY_GATEWAY_INBOX = subjects.gateway_inbox("*")
ANY_COORDINATOR_INBOX = subjects.coordinator_inbox("*")

# The event stream (issue 13, ``rpa_common.events``): JetStream's API is request/reply on
# ``$JS.API.<verb>.<stream>``, its answers, publish acks and a consumer's deliveries come to the
# client's ``_INBOX`` subjects, and an ordered consumer answers flow control on ``$JS.FC``.
_JS_API = "$JS.API"
REPLY_INBOXES = "_INBOX.>"
EVENTS_STREAM_ADMIN = (
    f"{_JS_API}.STREAM.INFO.{events.STREAM}",
    f"{_JS_API}.STREAM.CREATE.{events.STREAM}",
    f"{_JS_API}.STREAM.UPDATE.{events.STREAM}",
)
EVENTS_READ = (
    f"{_JS_API}.STREAM.INFO.{events.STREAM}",
    f"{_JS_API}.CONSUMER.CREATE.{events.STREAM}",
    f"{_JS_API}.CONSUMER.CREATE.{events.STREAM}.>",
    f"{_JS_API}.CONSUMER.DELETE.{events.STREAM}.>",
    f"{_JS_API}.CONSUMER.INFO.{events.STREAM}.>",
    f"$JS.FC.{events.STREAM}.>",
)
_HOOKS = f"{events.STREAM}.{events.WEBHOOK_CONSUMER}"
EVENTS_WEBHOOK_INTAKE = (
    f"{_JS_API}.CONSUMER.INFO.{_HOOKS}",
    f"{_JS_API}.CONSUMER.CREATE.{_HOOKS}",
    f"{_JS_API}.CONSUMER.CREATE.{_HOOKS}.>",
    f"{_JS_API}.CONSUMER.DURABLE.CREATE.{_HOOKS}",
    f"{_JS_API}.CONSUMER.MSG.NEXT.{_HOOKS}",
    f"$JS.ACK.{_HOOKS}.>",
)
"""The scheduler's durable pull consumer for webhook deliveries: create it, fetch, ack."""
JETSTREAM_SUBJECTS = frozenset(
    {*EVENTS_STREAM_ADMIN, *EVENTS_READ, *EVENTS_WEBHOOK_INTAKE, events.ALL_SUBJECTS}
)
"""Subjects the NATS server itself answers or stores (JetStream), not another service."""


@dataclass(frozen=True)
class ServicePermissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


PERMISSIONS: Mapping[str, ServicePermissions] = {
    "api": ServicePermissions(
        publish=(
            subjects.AUTH_CHANGED,
            subjects.JOB_CREATED,
            subjects.JOB_STATE,
            subjects.JOB_CONTROL,
            subjects.RESOURCE_CHANGED,
            subjects.ROBOT_CHANGED,
            subjects.TRIGGER_CHANGED,
            *EVENTS_READ,
        ),
        subscribe=(subjects.AUTH_CHANGED, REPLY_INBOXES),
    ),
    "scheduler": ServicePermissions(
        publish=(
            subjects.JOB_CREATED,
            subjects.JOB_STATE,
            subjects.JOB_CONTROL,
            subjects.ROBOT_STATUS,
            ANY_GATEWAY_INBOX,
            ANY_COORDINATOR_INBOX,
            events.ALL_SUBJECTS,
            *EVENTS_STREAM_ADMIN,
            *EVENTS_WEBHOOK_INTAKE,
        ),
        subscribe=(
            subjects.JOB_CREATED,
            subjects.JOB_STATE,
            subjects.ROBOT_STATUS,
            subjects.SESSION_STATE,
            subjects.TRIGGER_CHANGED,
            REPLY_INBOXES,
        ),
    ),
    "gateway": ServicePermissions(
        publish=(
            subjects.JOB_CREATED,
            subjects.JOB_STATE,
            subjects.ROBOT_STATUS,
            # A robot that reconnects elsewhere: its new gateway tells the previous one to let go.
            ANY_GATEWAY_INBOX,
        ),
        subscribe=(
            ANY_GATEWAY_INBOX,
            subjects.JOB_CONTROL,
            subjects.JOB_STATE,
            subjects.ROBOT_CHANGED,
            subjects.RESOURCE_CHANGED,
        ),
    ),
    "coordinator": ServicePermissions(
        publish=(subjects.SESSION_STATE,),
        subscribe=(ANY_COORDINATOR_INBOX, subjects.JOB_STATE, subjects.ROBOT_STATUS),
    ),
}
"""Per service user: the subjects (NATS wildcards allowed) it may publish and subscribe to."""


def password_variable(user: str) -> str:
    return f"NATS_PASSWORD_{user.upper()}"


def authorization_block(passwords: Mapping[str, str] | None = None) -> str:
    """nats-server's ``authorization`` block for every service user.

    Without ``passwords``, each password is the environment variable ``password_variable(user)``,
    which nats-server resolves when it reads its configuration (so the file holds no secret).
    """
    lines = ["authorization {", "  users = ["]
    for user, perms in PERMISSIONS.items():
        password = json.dumps(passwords[user]) if passwords else f"${password_variable(user)}"
        lines += [
            f"    {{user: {user}, password: {password}, permissions: {{",
            f"      publish: {{allow: {json.dumps(list(perms.publish))}}},",
            f"      subscribe: {{allow: {json.dumps(list(perms.subscribe))}}}",
            "    }},",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rpa_common.nats.permissions",
        description="Print nats-server's authorization block: one user per service, least privilege.",
    )
    parser.parse_args(list(argv) if argv is not None else None)
    sys.stdout.write(authorization_block())
    return 0


if __name__ == "__main__":
    sys.exit(main())
