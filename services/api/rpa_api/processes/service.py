"""Processes and their versions: publishing (create or add a version), reads, current version, deletes.

Functions here run inside the request's unit of work and only ``flush``. Package bytes go to
``process_package_chunk`` through ``rpa_common.packages`` (which the robot gateway reads too).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Principal
from rpa_api.kit.audit import record
from rpa_api.kit.folders import check_folder
from rpa_api.kit.lookup import get_owned
from rpa_api.kit.names import contains, flush_or_conflict
from rpa_api.kit.patch import require_not_null
from rpa_api.processes import schemas
from rpa_api.processes.package import CheckedPackage
from rpa_common import packages
from rpa_common.errors import Conflict, Forbidden, NotFound, Unprocessable
from rpa_common.models import Job, Process, ProcessVersion


def read_package(session: AsyncSession, version_id: uuid.UUID) -> AsyncIterator[bytes]:
    """The bytes of a package version, chunk by chunk (see ``rpa_common.packages.read_package``)."""
    return packages.read_package(session, version_id)


# Reads -------------------------------------------------------------------------------------------


def processes_query(principal: Principal) -> sa.Select[Process]:
    return sa.select(Process).where(
        Process.account_id == principal.account_id, principal.folder_clause(Process.folder_id)
    )


def list_query(
    principal: Principal, *, name: str | None = None, folder_id: uuid.UUID | None = None
) -> sa.Select[Process]:
    stmt = processes_query(principal)
    if name:
        stmt = stmt.where(contains(Process.name, name))
    if folder_id is not None:
        stmt = stmt.where(Process.folder_id == folder_id)
    return stmt


async def get_process(
    session: AsyncSession, principal: Principal, process_id: uuid.UUID, *, lock: bool = False
) -> Process:
    return await get_owned(
        session, processes_query(principal).where(Process.id == process_id), "process", process_id, lock=lock
    )


async def get_version(
    session: AsyncSession, principal: Principal, process_id: uuid.UUID, version_id: uuid.UUID
) -> tuple[Process, ProcessVersion]:
    process = await get_process(session, principal, process_id)
    version = (
        await session.execute(
            sa.select(ProcessVersion).where(
                ProcessVersion.id == version_id, ProcessVersion.process_id == process.id
            )
        )
    ).scalar_one_or_none()
    if version is None:
        raise NotFound.of("process version", version_id)
    return process, version


def versions_query(process: Process) -> sa.Select[ProcessVersion]:
    return sa.select(ProcessVersion).where(ProcessVersion.process_id == process.id)


async def current_labels(session: AsyncSession, processes: Iterable[Process]) -> dict[uuid.UUID, str]:
    ids = [p.current_version_id for p in processes if p.current_version_id is not None]
    if not ids:
        return {}
    rows = await session.execute(
        sa.select(ProcessVersion.id, ProcessVersion.version).where(ProcessVersion.id.in_(ids))
    )
    return {vid: label for vid, label in rows}


def process_out(process: Process, labels: dict[uuid.UUID, str]) -> schemas.ProcessOut:
    return schemas.ProcessOut(
        id=process.id,
        name=process.name,
        description=process.description,
        folder_id=process.folder_id,
        current_version_id=process.current_version_id,
        current_version=labels.get(process.current_version_id) if process.current_version_id else None,
        min_runtime_version=process.min_runtime_version,
        created_at=process.created_at,
        updated_at=process.updated_at,
    )


async def process_detail(session: AsyncSession, process: Process) -> schemas.ProcessOut:
    return process_out(process, await current_labels(session, [process]))


def version_out(process: Process, version: ProcessVersion) -> schemas.VersionOut:
    data = schemas.VersionOut.model_validate(
        {
            **{k: getattr(version, k) for k in schemas.VersionOut.model_fields if k != "is_current"},
            "is_current": process.current_version_id == version.id,
        }
    )
    return data


# Publishing --------------------------------------------------------------------------------------


@dataclass
class Published:
    process: Process
    version: ProcessVersion
    process_created: bool


def _make_current(process: Process, version: ProcessVersion) -> None:
    process.current_version_id = version.id
    process.min_runtime_version = version.min_runtime_version


async def publish(
    session: AsyncSession,
    principal: Principal,
    *,
    checked: CheckedPackage,
    fileobj: BinaryIO,
    new_process_id: uuid.UUID,
    version_id: uuid.UUID,
    notes: str,
    make_current: bool,
    folder_id: uuid.UUID | None = None,
    process_id: uuid.UUID | None = None,
) -> Published:
    """Store a checked package as a new version; create the process (by manifest name) if needed.

    ``process_id`` given: the version is for that process, whose name the manifest must carry.
    Otherwise the process is found, or created with ``new_process_id`` in ``folder_id``.
    """
    manifest = checked.manifest
    done = await session.get(ProcessVersion, version_id)
    if done is not None:  # a re-run after a commit that did happen
        process = await get_process(session, principal, done.process_id)
        return Published(process, done, process.id == new_process_id)

    created = False
    if process_id is not None:
        process = await get_process(session, principal, process_id, lock=True)
        if manifest.name != process.name:
            raise Unprocessable(
                f"the manifest names process {manifest.name!r}, not {process.name!r}", field="manifest.name"
            )
    else:
        found = (
            await session.execute(
                sa.select(Process)
                .where(Process.account_id == principal.account_id, Process.name == manifest.name)
                .with_for_update()
            )
        ).scalar_one_or_none()
        if found is not None:
            if not principal.may_use_folder(found.folder_id):
                raise Forbidden(f"process {manifest.name!r} is in a folder your roles do not give access to")
            process = found
        else:
            await check_folder(session, principal, folder_id)
            process = Process(
                id=new_process_id,
                account_id=principal.account_id,
                folder_id=folder_id,
                name=manifest.name,
                description=manifest.description or "",
            )
            session.add(process)
            await flush_or_conflict(
                session, f"process {manifest.name!r} was just created by another publication; retry", "name"
            )
            created = True

    taken = await session.scalar(
        sa.select(ProcessVersion.id).where(
            ProcessVersion.process_id == process.id, ProcessVersion.version == manifest.version
        )
    )
    if taken is not None:
        raise Conflict(
            f"process {process.name!r} already has a version {manifest.version!r}", field="manifest.version"
        )
    version = ProcessVersion(
        id=version_id,
        account_id=principal.account_id,
        process_id=process.id,
        version=manifest.version,
        notes=notes,
        entry_point=manifest.entry_point,
        min_runtime_version=manifest.min_runtime_version,
        default_input=manifest.default_input,
        sha256=checked.sha256,
        size=checked.size,
        published_by=principal.user_id,
    )
    session.add(version)
    await flush_or_conflict(
        session, f"process {process.name!r} already has a version {manifest.version!r}", "manifest.version"
    )
    await packages.store_package(session, version.id, fileobj)
    # A process always has a current version once it has one at all.
    if make_current or process.current_version_id is None:
        _make_current(process, version)
    await session.flush()
    record(
        session,
        principal,
        "publish",
        "process_version",
        version.id,
        {
            "process_id": str(process.id),
            "process": process.name,
            "process_created": created,
            "version": version.version,
            "sha256": version.sha256,
            "size": version.size,
            "current": process.current_version_id == version.id,
        },
    )
    return Published(process, version, created)


# Changes -----------------------------------------------------------------------------------------


async def update_process(
    session: AsyncSession, principal: Principal, process_id: uuid.UUID, body: schemas.ProcessUpdate
) -> Process:
    fields = body.model_dump(exclude_unset=True)
    require_not_null(fields, "description")
    process = await get_process(session, principal, process_id, lock=True)
    if "folder_id" in fields and fields["folder_id"] != process.folder_id:
        await check_folder(session, principal, fields["folder_id"])
    changes: dict[str, Any] = {}
    for name, value in fields.items():
        if getattr(process, name) != value:
            changes[name] = {"from": getattr(process, name), "to": value}
            setattr(process, name, value)
    if changes:
        await session.flush()
        record(session, principal, "update", "process", process.id, changes)
    return process


async def make_current(
    session: AsyncSession, principal: Principal, process_id: uuid.UUID, version_id: uuid.UUID
) -> tuple[Process, ProcessVersion]:
    process = await get_process(session, principal, process_id, lock=True)
    _, version = await get_version(session, principal, process_id, version_id)
    if process.current_version_id != version.id:
        previous = process.current_version_id
        _make_current(process, version)
        await session.flush()
        record(
            session,
            principal,
            "make_current",
            "process",
            process.id,
            {"current_version_id": {"from": previous, "to": version.id}, "version": version.version},
        )
    return process, version


async def _jobs_using(session: AsyncSession, *where: sa.ColumnElement[bool]) -> int:
    return int(await session.scalar(sa.select(sa.func.count()).select_from(Job).where(*where)) or 0)


async def delete_version(
    session: AsyncSession, principal: Principal, process_id: uuid.UUID, version_id: uuid.UUID
) -> None:
    """Refused while jobs use the version, and for the current version (make another current first,
    or delete the whole process when it is the only one)."""
    process = await get_process(session, principal, process_id, lock=True)
    _, version = await get_version(session, principal, process_id, version_id)
    if process.current_version_id == version.id:
        raise Conflict(
            "this is the current version: make another version current first "
            "(or delete the process if this is its only version)"
        )
    if await _jobs_using(session, Job.process_version_id == version.id):
        raise Conflict("jobs use this version; it is kept for their history")
    record(
        session,
        principal,
        "delete",
        "process_version",
        version.id,
        {"process_id": str(process.id), "version": version.version, "sha256": version.sha256},
    )
    await session.delete(version)  # its chunks go with it (ON DELETE CASCADE)
    await session.flush()


async def delete_process(session: AsyncSession, principal: Principal, process_id: uuid.UUID) -> None:
    process = await get_process(session, principal, process_id, lock=True)
    if await _jobs_using(session, Job.process_id == process.id):
        raise Conflict("jobs refer to this process; it is kept for their history")
    record(session, principal, "delete", "process", process.id, {"name": process.name})
    # Break the process <-> current version cycle first: MariaDB refuses a cascade that comes back
    # to update the row being deleted.
    process.current_version_id = None
    await session.flush()
    await session.delete(process)
    await session.flush()
