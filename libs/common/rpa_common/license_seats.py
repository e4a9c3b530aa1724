"""License seats: may a connecting robot work, or is it Unlicensed (and why).

A seat is not stored: the robots of an account holding one are the connected ones of its kind that
are not Unlicensed (status Ready or Working). A gateway that dies frees its robots' seats when the
scheduler's heartbeat sweep marks them Disconnected; a robot that disconnects frees its seat at once.
Two gateways cannot hand out the same last seat: the decision is taken with the account's license
rows of that kind locked (``FOR UPDATE``), after the robot's own row (the lock order: job, robot,
license), so the second one waits, then counts the first.

Which kind a robot needs: an unattended robot an Unattended seat, an attended robot an Attended or
an Attended Floating seat (both counted as concurrent seats here: in use while connected). A
coordinator needs none. Expired licenses give no seat.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_common.models import License, Robot
from rpa_common.models.enums import LicenseKind, RobotRole, RobotStatus

KINDS_FOR_ROLE: dict[RobotRole, tuple[LicenseKind, ...]] = {
    RobotRole.UNATTENDED: (LicenseKind.UNATTENDED,),
    RobotRole.ATTENDED: (LicenseKind.ATTENDED, LicenseKind.ATTENDED_FLOATING),
}
SEAT_HOLDING = (RobotStatus.READY, RobotStatus.WORKING)


def roles_for(kind: LicenseKind) -> list[RobotRole]:
    return [role for role, kinds in KINDS_FOR_ROLE.items() if kind in kinds]


async def _licenses(
    session: AsyncSession, account_id: uuid.UUID, kinds: tuple[LicenseKind, ...], *, lock: bool
) -> list[Any]:
    stmt = (
        sa.select(License.id, License.capacity, License.expires_at)
        .where(License.account_id == account_id, License.kind.in_(kinds))
        .order_by(License.id)
    )
    return list((await session.execute(stmt.with_for_update() if lock else stmt)).all())


def _no_valid_license(rows: list[Any], names: str, now: datetime) -> tuple[str | None, int]:
    """(why no seat can be had at all, or None; the capacity of the unexpired licenses)."""
    if not rows:
        return f"no {names} license is installed", 0
    valid = [row for row in rows if row.expires_at is None or row.expires_at > now]
    if not valid:
        return f"the {names} license expired", 0
    return None, sum(row.capacity for row in valid)


async def expiry_refusal(
    session: AsyncSession, *, account_id: uuid.UUID, role: RobotRole, now: datetime
) -> str | None:
    """Why a robot that holds a seat must give it up now (its licenses expired or were removed)."""
    kinds = KINDS_FOR_ROLE.get(role)
    if kinds is None:
        return None
    rows = await _licenses(session, account_id, kinds, lock=False)
    return _no_valid_license(rows, " or ".join(k.value for k in kinds), now)[0]


@dataclass(frozen=True)
class Seats:
    """What a robot's kind of seat looks like in its account: why it cannot have one (or None),
    the capacity of the unexpired licenses, and the seats other robots hold."""

    refusal: str | None
    capacity: int
    in_use: int
    kinds: str


async def seats_for(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    robot_id: uuid.UUID,
    role: RobotRole,
    now: datetime,
    lock: bool = True,
) -> Seats | None:
    """The seat check of ``seat_refusal``; None for a role that needs no seat. ``lock=False``: a
    read that decides nothing (``GET /jobs/{id}/explain``)."""
    kinds = KINDS_FOR_ROLE.get(role)
    if kinds is None:
        return None
    names = " or ".join(k.value for k in kinds)
    refusal, capacity = _no_valid_license(await _licenses(session, account_id, kinds, lock=lock), names, now)
    if refusal is not None:
        return Seats(refusal, capacity, 0, names)
    in_use = (
        await session.execute(
            sa.select(sa.func.count())
            .select_from(Robot)
            .where(
                Robot.account_id == account_id,
                Robot.role.in_(roles_for(kinds[0])),
                Robot.status.in_(SEAT_HOLDING),
                Robot.id != robot_id,
            )
        )
    ).scalar_one()
    if in_use >= capacity:
        return Seats(f"all {capacity} {names} license seats are in use", capacity, in_use, names)
    return Seats(None, capacity, in_use, names)


async def seat_refusal(
    session: AsyncSession, *, account_id: uuid.UUID, robot_id: uuid.UUID, role: RobotRole, now: datetime
) -> str | None:
    """None when the robot may hold a seat now, else why not (for the robot and the API).

    Call it with the robot's row locked, in the transaction that writes the robot's status."""
    seats = await seats_for(session, account_id=account_id, robot_id=robot_id, role=role, now=now)
    return None if seats is None else seats.refusal
