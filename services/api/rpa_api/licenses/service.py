"""Licenses: rules and queries. A key is installed only once its signature is proven by one of the
issuer public keys in the settings (``RPA_LICENSE_PUBLIC_KEYS``); what it says cannot be changed
afterwards, only the license removed. Seats are counted from robot state (``rpa_common.license_seats``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal
from rpa_api.kit.audit import record
from rpa_api.kit.lookup import get_owned
from rpa_api.licenses import schemas
from rpa_common.errors import Conflict, Unprocessable
from rpa_common.license_seats import SEAT_HOLDING, roles_for
from rpa_common.licensing import LicenseDocument, LicenseKeyError, parse_public_keys, verify
from rpa_common.models import License, Robot
from rpa_common.models.base import utcnow
from rpa_common.models.enums import LicenseKind


def licenses_query(principal: Principal) -> sa.Select[License]:
    return sa.select(License).where(License.account_id == principal.account_id)


def verified(key: str, public_keys_text: str) -> LicenseDocument:
    """The document ``key`` holds, or a 422 naming ``key`` with what is wrong with it."""
    try:
        return verify(key, parse_public_keys(public_keys_text))
    except LicenseKeyError as exc:
        raise Unprocessable(f"key: {exc}", field="key") from exc


async def install(
    session: AsyncSession, principal: Principal, body: schemas.LicenseInstall, document: LicenseDocument
) -> License:
    existing = await session.get(License, document.id)
    if existing is not None:
        # Also another account's: one license key serves one account.
        raise Conflict("this license key is already installed", field="key")
    license_ = License(
        id=document.id,
        account_id=principal.account_id,
        name=body.name or f"{document.licensee} {document.kind.value}"[:100],
        kind=document.kind,
        capacity=document.capacity,
        expires_at=document.expires_at,
        key=body.key.strip(),
        licensee=document.licensee[:200],
        issued_at=document.issued_at,
    )
    session.add(license_)
    try:
        await session.flush()
    except sa.exc.IntegrityError as exc:
        raise Conflict("this license key is already installed", field="key") from exc
    record(
        session,
        principal,
        "install",
        "license",
        license_.id,
        {
            "name": license_.name,
            "licensee": license_.licensee,
            "kind": license_.kind.value,
            "capacity": license_.capacity,
            "expires_at": license_.expires_at.isoformat() if license_.expires_at else None,
        },
    )
    return license_


async def get_license(
    session: AsyncSession, principal: Principal, license_id: uuid.UUID, *, lock: bool = False
) -> License:
    return await get_owned(
        session, licenses_query(principal).where(License.id == license_id), "license", license_id, lock=lock
    )


async def delete_license(session: AsyncSession, principal: Principal, license_id: uuid.UUID) -> None:
    """Remove a license: robots already connected keep their status until they reconnect."""
    license_ = await get_license(session, principal, license_id, lock=True)
    await session.execute(sa.delete(License).where(License.id == license_.id))
    record(session, principal, "delete", "license", license_.id, {"name": license_.name})


async def usage(session: AsyncSession, account_id: uuid.UUID) -> dict[LicenseKind, tuple[int, int]]:
    """Per license kind: (assigned, in use) robots of the account."""
    rows = (
        await session.execute(
            sa.select(Robot.role, Robot.status, sa.func.count())
            .where(Robot.account_id == account_id, Robot.is_active.is_(True))
            .group_by(Robot.role, Robot.status)
        )
    ).all()
    out: dict[LicenseKind, tuple[int, int]] = {}
    for kind in LicenseKind:
        roles = roles_for(kind)
        assigned = sum(int(n) for role, _, n in rows if role in roles)
        in_use = sum(int(n) for role, status, n in rows if role in roles and status in SEAT_HOLDING)
        out[kind] = (assigned, in_use)
    return out


def license_out(license_: License, usage_of: dict[LicenseKind, tuple[int, int]]) -> schemas.LicenseOut:
    assigned, in_use = usage_of.get(license_.kind, (0, 0))
    expired = license_.expires_at is not None and license_.expires_at <= utcnow()
    return schemas.LicenseOut(
        id=license_.id,
        name=license_.name,
        licensee=license_.licensee,
        kind=license_.kind,
        capacity=license_.capacity,
        assigned=assigned,
        in_use=in_use,
        issued_at=license_.issued_at,
        expires_at=license_.expires_at,
        expired=expired,
        created_at=license_.created_at,
    )


async def outs(
    session: AsyncSession, principal: Principal, licenses: Sequence[License]
) -> list[schemas.LicenseOut]:
    usage_of = await usage(session, principal.account_id)
    return [license_out(lic, usage_of) for lic in licenses]
