"""Resources as robots see them: the value that applies to a robot, Text set by a robot, credentials.

A resource (Text, Credentials, Calendar) has at most one value per scope: all robots, one robot
group, one robot. For a robot, the most specific value wins:

1. the value given to the robot itself;
2. else a value given to one of the robot's groups. A robot may be in several groups with a value
   each: the group whose name comes first (case-insensitively, then by id) wins. The rule is
   deterministic, and a person can see it in the group names;
3. else the value given to all robots.

No applicable value: ``ResourceError("not_allowed")``; the robot gets nothing of the resource.

A robot sets a Text resource only within its scope: it changes the value that resolves for it (its
own value, its group's value per the rule above, or the all-robots value: a global variable is meant
to be shared by the robots it is given to). It never creates a value, so it can never give a value
to a scope broader than the one a person gave it. Every set by a robot is audited.

``credential_for_robot`` returns the clear password and writes the audit record of the read in the
same transaction. These functions run inside the caller's transaction; they flush, never commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.audit import add_audit_record
from rpa_common.credentials import CredentialUnreadable, MasterKeyError, password_of
from rpa_common.models import (
    Calendar,
    CalendarDay,
    Resource,
    ResourceValue,
    Robot,
    RobotGroup,
    RobotGroupMember,
)
from rpa_common.models.enums import ActorType, ResourceKind, ResourceScope
from rpa_common.settings import Settings
from rpa_common.text import bad_text

log = structlog.get_logger(__name__)

TEXT_MAX_BYTES = 65_535
"""The longest Text value in UTF-8 bytes, people and robots alike (what a MariaDB TEXT holds)."""


class ResourceError(Exception):
    """Something a robot caused: ``code`` for the error frame, ``field`` it names, HTTP-like ``status``.

    Codes: ``resource_not_found`` (404), ``not_allowed`` (403: no value for this robot's scope),
    ``wrong_kind`` (409), ``invalid`` (422), ``unreadable`` (503: the stored password does not
    decrypt; an operator's problem, logged, never the robot's).
    """

    STATUS = {
        "resource_not_found": 404,
        "not_allowed": 403,
        "wrong_kind": 409,
        "invalid": 422,
        "unreadable": 503,
    }

    def __init__(self, code: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.field = field
        self.status = self.STATUS.get(code, 400)


@dataclass(frozen=True)
class ResolvedResource:
    resource_id: uuid.UUID
    value_id: uuid.UUID
    name: str
    kind: ResourceKind
    scope: ResourceScope
    text: str | None
    login: str | None
    expires_at: datetime | None
    expired: bool
    calendar: dict[str, Any] | None
    """``{"calendar_id", "name", "time_zone", "weekend_days", "days": [{"day", "working", "note"}]}``"""


async def _robot(session: AsyncSession, account_id: uuid.UUID, robot_id: uuid.UUID) -> Robot:
    robot = await session.scalar(sa.select(Robot).where(Robot.id == robot_id, Robot.account_id == account_id))
    if robot is None:
        # The gateway authenticated this robot; it was deleted since.
        raise ResourceError("not_allowed", f"robot {robot_id} does not exist in this account")
    return robot


async def _resource(session: AsyncSession, account_id: uuid.UUID, name: str) -> Resource:
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise ResourceError("invalid", "name must be a resource name of 1-100 characters", "name")
    resource = await session.scalar(
        sa.select(Resource).where(
            Resource.account_id == account_id, sa.func.lower(Resource.name) == name.lower()
        )
    )
    if resource is None:
        raise ResourceError("resource_not_found", f"no resource named {name!r}", "name")
    return resource


async def _applicable_value(
    session: AsyncSession, resource: Resource, robot_id: uuid.UUID, *, lock: bool = False
) -> ResourceValue:
    """The value of ``resource`` that applies to the robot (see the module's rule)."""
    group_ids = sa.select(RobotGroupMember.group_id).where(RobotGroupMember.robot_id == robot_id)
    stmt = (
        sa.select(ResourceValue, RobotGroup.name)
        .outerjoin(RobotGroup, RobotGroup.id == ResourceValue.robot_group_id)
        .where(
            ResourceValue.resource_id == resource.id,
            ResourceValue.account_id == resource.account_id,
            sa.or_(
                ResourceValue.scope == ResourceScope.ALL,
                sa.and_(ResourceValue.scope == ResourceScope.ROBOT, ResourceValue.robot_id == robot_id),
                sa.and_(
                    ResourceValue.scope == ResourceScope.ROBOT_GROUP,
                    ResourceValue.robot_group_id.in_(group_ids),
                ),
            ),
        )
    )
    rows = (await session.execute(stmt)).all()
    if not rows:
        raise ResourceError(
            "not_allowed",
            f"resource {resource.name!r} has no value for this robot, its groups or all robots",
            "name",
        )
    rank = {ResourceScope.ROBOT: 0, ResourceScope.ROBOT_GROUP: 1, ResourceScope.ALL: 2}
    value, _ = min(
        rows, key=lambda r: (rank[r[0].scope], (r[1] or "").lower(), str(r[0].robot_group_id or ""))
    )
    if lock:
        locked = await session.scalar(
            sa.select(ResourceValue)
            .where(ResourceValue.id == value.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if locked is None:  # deleted by a person meanwhile: resolve again
            return await _applicable_value(session, resource, robot_id, lock=False)
        value = locked
    return value


async def calendar_document(session: AsyncSession, calendar_id: uuid.UUID | None) -> dict[str, Any] | None:
    """A calendar as robots receive it (None if it was deleted)."""
    if calendar_id is None:
        return None
    cal = await session.get(Calendar, calendar_id)
    if cal is None:
        return None
    days = (
        await session.execute(
            sa.select(CalendarDay.day, CalendarDay.working, CalendarDay.note)
            .where(CalendarDay.calendar_id == cal.id)
            .order_by(CalendarDay.day)
        )
    ).all()
    return {
        "calendar_id": str(cal.id),
        "name": cal.name,
        "time_zone": cal.time_zone,
        "weekend_days": list(cal.weekend_days),
        "days": [{"day": d.day.isoformat(), "working": d.working, "note": d.note} for d in days],
    }


async def _resolved(session: AsyncSession, resource: Resource, value: ResourceValue) -> ResolvedResource:
    now = datetime.now(UTC)
    return ResolvedResource(
        resource_id=resource.id,
        value_id=value.id,
        name=resource.name,
        kind=resource.kind,
        scope=value.scope,
        text=value.text_value if resource.kind is ResourceKind.TEXT else None,
        login=value.login if resource.kind is ResourceKind.CREDENTIALS else None,
        expires_at=value.expires_at,
        expired=value.expires_at is not None and value.expires_at <= now,
        calendar=(
            await calendar_document(session, value.calendar_id)
            if resource.kind is ResourceKind.CALENDAR
            else None
        ),
    )


def _audit_robot(
    session: AsyncSession,
    account_id: uuid.UUID,
    robot: Robot,
    action: str,
    resource: Resource,
    value: ResourceValue,
    client: tuple[str | None, str | None] = (None, None),
    **extra: Any,
) -> None:
    """Audit record of ``robot``'s ``action`` on ``value`` of ``resource`` (``extra`` joins the changes)."""
    add_audit_record(
        session,
        account_id=account_id,
        kind="robot",
        actor_type=ActorType.ROBOT,
        actor_id=robot.id,
        actor_name=robot.name,
        action=action,
        object_type="resource",
        object_id=resource.id,
        changes={"name": resource.name, "scope": value.scope.value, "value_id": str(value.id), **extra},
        client_address=client[0],
        user_agent=client[1],
    )


async def resolve_for_robot(
    session: AsyncSession, *, account_id: uuid.UUID, robot_id: uuid.UUID, name: str
) -> ResolvedResource:
    """The value of resource ``name`` that applies to the robot: robot > group > all robots.

    Never carries a password (``credential_for_robot`` does, audited)."""
    await _robot(session, account_id, robot_id)
    resource = await _resource(session, account_id, name)
    value = await _applicable_value(session, resource, robot_id)
    return await _resolved(session, resource, value)


async def set_text_for_robot(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    robot_id: uuid.UUID,
    name: str,
    value: str,
    client: tuple[str | None, str | None] = (None, None),
) -> ResolvedResource:
    """Set the Text value that resolves for the robot (never creates one); audited."""
    if not isinstance(value, str):
        raise ResourceError("invalid", "value must be a string", "value")
    reason = bad_text(value)
    if reason is not None:
        raise ResourceError("invalid", f"value {reason}", "value")
    if len(value.encode()) > TEXT_MAX_BYTES:
        raise ResourceError("invalid", f"value is longer than {TEXT_MAX_BYTES} bytes (UTF-8)", "value")
    robot = await _robot(session, account_id, robot_id)
    resource = await _resource(session, account_id, name)
    if resource.kind is not ResourceKind.TEXT:
        raise ResourceError(
            "wrong_kind", f"resource {resource.name!r} is {resource.kind.value}, not text", "name"
        )
    row = await _applicable_value(session, resource, robot_id, lock=True)
    if row.text_value != value:
        row.text_value = value
        row.updated_at = datetime.now(UTC)
        _audit_robot(session, account_id, robot, "set_text", resource, row, client, length=len(value))
        await session.flush()
    return await _resolved(session, resource, row)


async def credential_for_robot(
    session: AsyncSession,
    settings: Settings,
    *,
    account_id: uuid.UUID,
    robot_id: uuid.UUID,
    name: str,
    client: tuple[str | None, str | None] = (None, None),
) -> tuple[ResolvedResource, str]:
    """``(resolved, clear password)`` of credential ``name`` for the robot, and the audit record of
    this read in the same transaction (no password in it)."""
    robot = await _robot(session, account_id, robot_id)
    resource = await _resource(session, account_id, name)
    if resource.kind is not ResourceKind.CREDENTIALS:
        raise ResourceError(
            "wrong_kind", f"resource {resource.name!r} is {resource.kind.value}, not credentials", "name"
        )
    value = await _applicable_value(session, resource, robot_id)
    try:
        password = await password_of(session, settings, value)
    except (CredentialUnreadable, MasterKeyError) as exc:
        log.error(
            "credentials.unreadable", resource_id=str(resource.id), value_id=str(value.id), error=str(exc)
        )
        raise ResourceError(
            "unreadable", f"credential {resource.name!r} cannot be read now; tell an administrator"
        ) from None
    _audit_robot(session, account_id, robot, "read_credential", resource, value, client, login=value.login)
    await session.flush()
    return await _resolved(session, resource, value), password
