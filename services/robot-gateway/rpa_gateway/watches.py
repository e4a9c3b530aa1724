"""Resource watches: ``resource.changed`` pushes to the connections that asked ``watch`` on a name.

Two paths lead to a push, and both end in the same place (``refresh``): re-resolve the resource
for each watching robot (robot > group > all, within its scope, as ``resource.get`` does) and push
only when what the robot sees differs from what it was last told (a digest per watch, no value
kept in memory).

- **The hint**: the API publishes ``ResourceChanged`` (ids and name, never a value) after a person
  changed a resource; every gateway replica hears it and refreshes the watches of that account
  that name the resource, within milliseconds.
- **The reconciliation**: a NATS message can be lost (NATS restarting, this replica reconnecting),
  so every ``RPA_GATEWAY_WATCH_RECHECK_S`` all watches of this replica are refreshed too, in
  chunks, one read transaction per chunk. A lost message thus delays a push by that period at
  most; it never stops watching. Re-sending every watched value on NATS reconnect instead would
  miss a message lost without a reconnect (a slow consumer's dropped message) and would push
  unchanged values; the digest comparison makes the periodic refresh silent when nothing changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import TYPE_CHECKING

import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common import resources
from rpa_common.db.uow import run_in_transaction
from rpa_common.nats import subjects
from rpa_common.nats.messages import ResourceChanged as ResourceChangedMessage
from rpa_gateway.connection import Connection
from rpa_gateway.tasks import DomainError, Watched, fingerprint, reply_error, resource_fields
from rpa_protocol import ResourceChanged, ResourceGet

if TYPE_CHECKING:
    from rpa_gateway.hub import Hub

log = structlog.get_logger(__name__)

CHUNK = 200
"""Watches refreshed per transaction."""

Target = tuple[Connection, str]
"""A connection and the folded name of one resource it watches."""


class Watches:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self.pushed = 0

    async def start(self) -> None:
        self._sub = await self.hub.ctx.nc.subscribe(subjects.RESOURCE_CHANGED, cb=self._on_changed)
        self._task = asyncio.create_task(self._recheck_loop(), name="gateway-watches")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:  # NATS already gone: nothing to undo
                log.info("nats.unsubscribe_skipped", error=str(exc))

    async def _on_changed(self, msg: Msg) -> None:
        try:
            change: ResourceChangedMessage = ResourceChangedMessage.decode(msg.data)
        except ValidationError as exc:
            log.warning("nats.bad_message", subject=msg.subject, error=str(exc))
            return
        folded = change.name.casefold()
        targets: list[Target] = []
        for conn in list(self.hub.connections.values()):
            if conn.watches is None or conn.robot.account_id != change.account_id:
                continue
            for key, watched in conn.watches.items():
                # By id, and by name too: a watch that did not resolve yet has no id, and a renamed
                # resource keeps its id.
                if watched.resource_id == change.resource_id or key == folded:
                    targets.append((conn, key))
        try:
            await self.refresh(targets)
        except Exception:
            # The periodic refresh will catch up; a hint that failed is not an error of the robot's.
            log.exception("watches.refresh_failed", resource_id=str(change.resource_id))

    async def _recheck_loop(self) -> None:
        period = self.hub.ctx.settings.gateway_watch_recheck_s
        while True:
            await asyncio.sleep(period)
            targets = [
                (conn, key)
                for conn in list(self.hub.connections.values())
                if conn.watches
                for key in list(conn.watches)
            ]
            for start in range(0, len(targets), CHUNK):
                try:
                    await self.refresh(targets[start : start + CHUNK])
                except Exception as exc:  # database down: next period
                    log.warning("watches.recheck_failed", error=type(exc).__name__)
                    break

    async def refresh(self, targets: list[Target]) -> int:
        """Re-resolve these watches; push ``resource.changed`` where the robot's view changed."""
        if not targets:
            return 0

        async def work(session: AsyncSession) -> list[tuple[Connection, Watched, ResourceChanged]]:
            out = []
            for conn, key in targets:
                watched = (conn.watches or {}).get(key)
                if watched is None or conn.closing:
                    continue
                frame, now = await _resolve(session, conn, watched)
                if now.fingerprint != watched.fingerprint:
                    out.append((conn, now, frame))
            return out

        changed = await run_in_transaction(self.hub.ctx.read_sessions, work)
        for conn, now, frame in changed:
            if conn.watches is not None and now.name.casefold() in conn.watches:
                conn.watches[now.name.casefold()] = now
                if await conn.send(frame):
                    self.pushed += 1
        return len(changed)


async def _resolve(
    session: AsyncSession, conn: Connection, watched: Watched
) -> tuple[ResourceChanged, Watched]:
    robot = conn.robot
    probe = ResourceGet(seq=1, request_id=uuid.UUID(int=0), name=watched.name, watch=True)
    try:
        resolved = await resources.resolve_for_robot(
            session, account_id=robot.account_id, robot_id=robot.id, name=watched.name
        )
    except DomainError as exc:
        error = reply_error(exc, probe)
        return (
            ResourceChanged(name=watched.name, error=error),
            Watched(watched.name, watched.resource_id, fingerprint(None, error)),
        )
    fields = resource_fields(resolved)
    # Pushed under the name the robot watches (its own spelling), whatever the resource's case.
    return (
        ResourceChanged(**{**fields, "name": watched.name}),
        Watched(watched.name, resolved.resource_id, fingerprint(fields)),
    )
