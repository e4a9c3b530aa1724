"""``GET /events``: the caller's events as Server-Sent Events, and the tickets that open the stream.

Events come from the JetStream stream ``RPA_EVENTS`` (``rpa_common.events``): an ordered consumer on
the caller's account subjects, from the sequence after ``Last-Event-ID`` (header, or the
``last_event_id`` query for clients that cannot set it) or from now. Each event is shown only if
the caller may read its kind of object and see its folder (events with no folder are visible to
the whole account). An id older than the stream keeps sends ``event: reset``: the client reloads.

A browser's ``EventSource`` cannot send ``Authorization``, and an access token in a URL ends up in
logs and histories: ``POST /events/ticket`` (with the bearer token) gives an opaque ticket valid
``RPA_EVENTS_TICKET_TTL_S`` seconds, usable once, for ``?ticket=``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import sqlalchemy as sa
import structlog
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import BaseModel, Field

from rpa_api.deps import (
    Ctx,
    CurrentPrincipal,
    Principal,
    _bearer,
    _oauth2,
    _user_grant,
    authenticate,
    get_grants,
    run_db,
)
from rpa_api.kit.audit import record
from rpa_api.openapi import errors
from rpa_common import events
from rpa_common.aio import get_within
from rpa_common.errors import BadRequest, Unauthorized
from rpa_common.models import EventTicket
from rpa_common.models.enums import ActorType
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O
from rpa_common.service import ServiceContext

log = structlog.get_logger(__name__)
router = APIRouter(tags=["events"])

READ_NEEDED: dict[str, O] = {
    "job": O.JOBS,
    "robot": O.ROBOTS,
    "task": O.TASKS,
    "trigger": O.TRIGGERS,
    "session": O.TERMINAL_SERVERS,
}
"""The permission (``:read``) an event type's object needs, by the type's first part."""


class Ticket(BaseModel):
    ticket: str = Field(description="Opaque; pass it as `GET /api/v1/events?ticket=...` once")
    expires_at: datetime


def _hash(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


@router.post(
    "/events/ticket",
    status_code=201,
    summary="A single-use ticket opening one event stream (for a browser's EventSource)",
)
async def create_ticket(ctx: Ctx, principal: CurrentPrincipal) -> Ticket:
    ticket = secrets.token_urlsafe(32)
    expires_at = datetime.now(UTC) + timedelta(seconds=ctx.settings.events_ticket_ttl_s)

    async def work(session: Any) -> None:
        # Expired tickets of the account go with each new one: the table stays small.
        await session.execute(
            sa.delete(EventTicket).where(
                EventTicket.account_id == principal.account_id, EventTicket.expires_at <= datetime.now(UTC)
            )
        )
        record(
            session,
            principal,
            "create_event_ticket",
            "user",
            principal.user_id,
            {"expires_at": expires_at.isoformat()},
        )
        session.add(
            EventTicket(
                ticket_hash=_hash(ticket),
                account_id=principal.account_id,
                user_id=principal.user_id,
                api_key_id=principal.api_key_id,
                expires_at=expires_at,
            )
        )

    await run_db(ctx, work)
    return Ticket(ticket=ticket, expires_at=expires_at)


async def _use_ticket(ctx: ServiceContext, request: Request, ticket: str) -> Principal:
    async def work(session: Any) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID | None] | None:
        row = (
            await session.execute(
                sa.select(EventTicket.account_id, EventTicket.user_id, EventTicket.api_key_id)
                .where(EventTicket.ticket_hash == _hash(ticket), EventTicket.expires_at > datetime.now(UTC))
                .with_for_update()
            )
        ).one_or_none()
        deleted = await session.execute(
            sa.delete(EventTicket).where(EventTicket.ticket_hash == _hash(ticket))
        )
        if row is None or deleted.rowcount != 1:
            return None
        return row.account_id, row.user_id, row.api_key_id

    found = await run_db(ctx, work)
    if found is None:
        raise Unauthorized("invalid, used or expired event stream ticket")
    account_id, user_id, api_key_id = found
    grant = await _user_grant(ctx, get_grants(request), user_id)
    if grant is None or not grant.is_active or grant.account_id != account_id:
        raise Unauthorized("user is disabled")
    return Principal(
        account_id=grant.account_id,
        user_id=grant.user_id,
        username=grant.username,
        actor_type=ActorType.API_KEY if api_key_id else ActorType.USER,
        permissions=set(grant.permissions),
        all_folders=grant.all_folders,
        folder_ids=set(grant.folder_ids),
        api_key_id=api_key_id,
        client_address=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        grant=grant,
    )


async def stream_principal(
    request: Request,
    ctx: Ctx,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    oauth2_token: Annotated[str | None, Depends(_oauth2)],
    ticket: Annotated[
        str | None, Query(max_length=200, description="A ticket from `POST /events/ticket` (single use)")
    ] = None,
) -> Principal:
    """The caller of the stream: by ticket, else by the usual bearer token."""
    if ticket is not None:
        return await _use_ticket(ctx, request, ticket)
    return await authenticate(request, ctx, credentials, oauth2_token)


def visible(principal: Principal, event: dict[str, Any]) -> bool:
    """May ``principal`` see this event (as the stream stores it)?"""
    needed = READ_NEEDED.get(str(event.get("type", "")).split(".")[0])
    if needed is None or not principal.can(needed, A.READ):
        return False
    folder = event.get("folder_id")
    return folder is None or principal.may_use_folder(uuid.UUID(folder))


def _types(raw: str | None) -> set[str] | None:
    if not raw:
        return None
    wanted = {t.strip() for t in raw.split(",") if t.strip()}
    unknown = sorted(wanted - set(events.EVENT_TYPES))
    if unknown:
        raise BadRequest(f"unknown event types: {', '.join(unknown)}", field="types")
    return wanted


def _last_id(header: str | None, query: int | None) -> int | None:
    if header is not None:
        try:
            value = int(header)
        except ValueError:
            raise BadRequest("Last-Event-ID is not an event id", field="Last-Event-ID") from None
        if value < 0:
            raise BadRequest("Last-Event-ID is not an event id", field="Last-Event-ID")
        return value
    return query


def sse(event_type: str, data: str, event_id: int | None = None) -> bytes:
    lines = [f"id: {event_id}"] if event_id is not None else []
    lines.append(f"event: {event_type}")
    lines.extend(f"data: {line}" for line in data.splitlines() or [""])
    return ("\n".join(lines) + "\n\n").encode()


@router.get(
    "/events",
    summary="The caller's events (Server-Sent Events; resumes after Last-Event-ID)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "An endless text/event-stream"},
        **errors(s400="A bad `types` or `Last-Event-ID`", s401="Missing token, or a used or expired ticket"),
    },
)
async def stream_events(
    ctx: Ctx,
    principal: Annotated[Principal, Depends(stream_principal)],
    types: Annotated[
        str | None,
        Query(description="Comma-separated event types (e.g. `job.state,robot.status`); all by default"),
    ] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: Annotated[
        int | None, Query(ge=0, description="For clients that cannot send the Last-Event-ID header")
    ] = None,
) -> StreamingResponse:
    wanted = _types(types)
    after = _last_id(last_event_id_header, last_event_id)
    js = ctx.nc.jetstream()
    reset = False
    try:
        info = await js.stream_info(events.STREAM)
    except NotFoundError:
        info = None
    kwargs: dict[str, Any] = {"deliver_policy": DeliverPolicy.NEW}
    if after is not None and info is not None:
        first = info.state.first_seq
        if after + 1 < first and after < info.state.last_seq:
            reset = True  # what was missed is gone: the client reloads, then follows from now
        else:
            kwargs = {
                "deliver_policy": DeliverPolicy.BY_START_SEQUENCE,
                "config": ConsumerConfig(opt_start_seq=after + 1),
            }
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1000)

    async def on_msg(msg: Any) -> None:
        await queue.put(msg)

    sub = await js.subscribe(
        events.account_subjects(principal.account_id),
        stream=events.STREAM,
        cb=on_msg,
        ordered_consumer=True,
        **kwargs,
    )
    heartbeat = ctx.settings.events_heartbeat_s

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b": stream open\n\n"
            if reset:
                yield sse("reset", json.dumps({"reason": "Last-Event-ID is older than the stream keeps"}))
            while True:
                msg = await get_within(queue, heartbeat)
                if msg is None:
                    yield b": heartbeat\n\n"
                    continue
                try:
                    event = json.loads(msg.data)
                except ValueError:
                    continue
                if wanted is not None and event.get("type") not in wanted:
                    continue
                if not visible(principal, event):
                    continue
                seq = msg.metadata.sequence.stream
                event["id"] = seq
                yield sse(event["type"], json.dumps(event, separators=(",", ":")), seq)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
