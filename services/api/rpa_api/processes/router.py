"""Processes endpoints: remote publishing (multipart upload of a package), versions, downloads.

An upload is spooled to a temporary file by the multipart parser (never held whole in memory),
then hashed and checked in a thread, then stored in 1 MiB chunks in one transaction.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Ctx, Principal, Transaction, require
from rpa_api.kit.pagination import Page, PageParams, paginate, sorted_by
from rpa_api.processes import schemas, service
from rpa_api.processes.package import CheckedPackage, inspect_package
from rpa_common.errors import UnsupportedMediaType
from rpa_common.models import Process, ProcessVersion
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O
from rpa_common.packages import stream_package
from rpa_common.service import ServiceContext

router = APIRouter()

_SORTABLE = {"name": Process.name, "created_at": Process.created_at, "updated_at": Process.updated_at}
_VERSION_SORTABLE = {
    "published_at": ProcessVersion.published_at,
    "version": ProcessVersion.version,
    "size": ProcessVersion.size,
}
_UPLOAD_ERRORS: dict[int | str, dict[str, str]] = {
    409: {"description": "this version label exists already"},
    413: {"description": "the package is larger than RPA_MAX_PACKAGE_BYTES"},
    415: {"description": "the body is not multipart/form-data"},
    422: {"description": "a bad package: not a zip, unsafe entry, bad or missing manifest"},
}

Read = Annotated[Principal, Depends(require(O.PROCESSES, A.READ))]
Publish = Annotated[Principal, Depends(require(O.PROCESSES, A.CREATE))]
Update = Annotated[Principal, Depends(require(O.PROCESSES, A.UPDATE))]
Delete = Annotated[Principal, Depends(require(O.PROCESSES, A.DELETE))]


async def require_multipart(request: Request) -> None:
    """Uploads are multipart only; checked before the form is validated, so a JSON body is a 415."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        raise UnsupportedMediaType(
            f"content-type {ctype or '(none)'} given; send multipart/form-data with a 'package' file"
        )


PackageFile = Annotated[UploadFile, File(description="The package: a zip with rpa.json at its root")]
Notes = Annotated[str, Form(max_length=10_000, description="Release notes")]
MakeCurrent = Annotated[bool, Form(description="New jobs take this version (default true)")]


async def _checked(ctx: ServiceContext, package: UploadFile) -> CheckedPackage:
    # Hashing and unzipping a file of up to max_package_bytes is blocking work: keep it off the loop.
    return await asyncio.to_thread(inspect_package, package.file, max_bytes=ctx.settings.max_package_bytes)


@router.post(
    "/processes/publish",
    status_code=201,
    summary="Publish a package: creates the process (by manifest name) or adds a version",
    dependencies=[Depends(require_multipart)],
    responses=_UPLOAD_ERRORS,
)
async def publish(
    package: PackageFile,
    tx: Transaction,
    ctx: Ctx,
    principal: Publish,
    notes: Notes = "",
    make_current: MakeCurrent = True,
    folder_id: Annotated[uuid.UUID | None, Form(description="Folder of a new process")] = None,
) -> schemas.PublishResult:
    checked = await _checked(ctx, package)
    new_process_id, version_id = uuid.uuid4(), uuid.uuid4()

    async def work(session: AsyncSession) -> schemas.PublishResult:
        done = await service.publish(
            session,
            principal,
            checked=checked,
            fileobj=package.file,
            new_process_id=new_process_id,
            version_id=version_id,
            notes=notes,
            make_current=make_current,
            folder_id=folder_id,
        )
        return schemas.PublishResult(
            process=await service.process_detail(session, done.process),
            version=service.version_out(done.process, done.version),
            process_created=done.process_created,
        )

    return await tx.run(work)


@router.post(
    "/processes/{process_id:uuid}/versions",
    status_code=201,
    summary="Publish a new version of a known process (the manifest must carry its name)",
    dependencies=[Depends(require_multipart)],
    responses={404: {}, **_UPLOAD_ERRORS},
)
async def publish_version(
    process_id: uuid.UUID,
    package: PackageFile,
    ctx: Ctx,
    tx: Transaction,
    principal: Publish,
    notes: Notes = "",
    make_current: MakeCurrent = True,
) -> schemas.VersionOut:
    # 404 before the work of checking the package.
    await tx.read(lambda session: service.get_process(session, principal, process_id))
    checked = await _checked(ctx, package)
    version_id = uuid.uuid4()

    async def work(session: AsyncSession) -> schemas.VersionOut:
        done = await service.publish(
            session,
            principal,
            checked=checked,
            fileobj=package.file,
            new_process_id=process_id,
            version_id=version_id,
            notes=notes,
            make_current=make_current,
            process_id=process_id,
        )
        return service.version_out(done.process, done.version)

    return await tx.run(work)


@router.get("/processes", summary="List processes")
async def list_processes(
    tx: Transaction,
    paging: Annotated[PageParams, Depends(sorted_by(*_SORTABLE))],
    principal: Read,
    name: Annotated[str | None, Query(max_length=100, description="Name contains (any case)")] = None,
    folder_id: uuid.UUID | None = None,
) -> Page[schemas.ProcessOut]:
    async def work(session: AsyncSession) -> Page[schemas.ProcessOut]:
        stmt = service.list_query(principal, name=name, folder_id=folder_id)
        rows, total = await paginate(session, stmt, paging, _SORTABLE, "name")
        labels = await service.current_labels(session, rows)
        return Page[schemas.ProcessOut](
            items=[service.process_out(p, labels) for p in rows],
            total=total,
            limit=paging.limit,
            offset=paging.offset,
        )

    return await tx.read(work)


@router.get("/processes/{process_id:uuid}", summary="A process")
async def get_process(process_id: uuid.UUID, tx: Transaction, principal: Read) -> schemas.ProcessOut:
    async def work(session: AsyncSession) -> schemas.ProcessOut:
        return await service.process_detail(
            session, await service.get_process(session, principal, process_id)
        )

    return await tx.read(work)


@router.patch("/processes/{process_id:uuid}", summary="Change a process's description or folder")
async def update_process(
    process_id: uuid.UUID, body: schemas.ProcessUpdate, tx: Transaction, principal: Update
) -> schemas.ProcessOut:
    async def work(session: AsyncSession) -> schemas.ProcessOut:
        process = await service.update_process(session, principal, process_id, body)
        return await service.process_detail(session, process)

    return await tx.run(work)


@router.delete(
    "/processes/{process_id:uuid}",
    status_code=204,
    summary="Delete a process with all its versions (refused while any job refers to it)",
    responses={409: {"description": "jobs refer to the process"}},
)
async def delete_process(process_id: uuid.UUID, tx: Transaction, principal: Delete) -> Response:
    await tx.run(lambda session: service.delete_process(session, principal, process_id))
    return Response(status_code=204)


@router.get("/processes/{process_id:uuid}/versions", summary="A process's versions")
async def list_versions(
    process_id: uuid.UUID,
    tx: Transaction,
    paging: Annotated[PageParams, Depends(sorted_by(*_VERSION_SORTABLE))],
    principal: Read,
) -> Page[schemas.VersionOut]:
    async def work(session: AsyncSession) -> Page[schemas.VersionOut]:
        process = await service.get_process(session, principal, process_id)
        rows, total = await paginate(
            session, service.versions_query(process), paging, _VERSION_SORTABLE, "-published_at"
        )
        return Page[schemas.VersionOut](
            items=[service.version_out(process, v) for v in rows],
            total=total,
            limit=paging.limit,
            offset=paging.offset,
        )

    return await tx.read(work)


@router.get("/processes/{process_id:uuid}/versions/{version_id:uuid}", summary="A process version")
async def get_version(
    process_id: uuid.UUID, version_id: uuid.UUID, tx: Transaction, principal: Read
) -> schemas.VersionOut:
    async def work(session: AsyncSession) -> schemas.VersionOut:
        process, version = await service.get_version(session, principal, process_id, version_id)
        return service.version_out(process, version)

    return await tx.read(work)


_PACKAGE_MEDIA = ("application/zip", "application/octet-stream")


@router.get(
    "/processes/{process_id:uuid}/versions/{version_id:uuid}/package",
    summary="Download a version's package (ETag and X-Checksum-Sha256 carry its sha256)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The package, a zip: `application/zip`, or `application/octet-stream` when the "
            "request's Accept asks for that and not for application/zip",
            "content": {
                media: {"schema": {"type": "string", "format": "binary"}} for media in _PACKAGE_MEDIA
            },
        },
        304: {"description": "If-None-Match matched"},
    },
)
async def download_package(
    process_id: uuid.UUID,
    version_id: uuid.UUID,
    request: Request,
    tx: Transaction,
    ctx: Ctx,
    principal: Read,
) -> Response:
    async def work(session: AsyncSession) -> Response:
        process, version = await service.get_version(session, principal, process_id, version_id)
        etag = f'"{version.sha256}"'
        headers = {"ETag": etag, "X-Checksum-Sha256": version.sha256, "Cache-Control": "private, max-age=0"}
        wanted = {t.strip() for t in request.headers.get("if-none-match", "").split(",")}
        if etag in wanted or f"W/{etag}" in wanted or "*" in wanted:
            return Response(status_code=304, headers=headers)
        filename = f"{process.name}-{version.version}.zip"
        ascii_name = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in filename)
        headers["Content-Disposition"] = (
            f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
        )
        headers["Content-Length"] = str(version.size)
        # The body outlives this request's session: it reads with a session of its own, chunk by chunk.
        accept = request.headers.get("accept", "")
        # Generic HTTP clients (openapi-python-client's among them) know binary bodies as octet-stream.
        media = _PACKAGE_MEDIA[1] if _PACKAGE_MEDIA[1] in accept and _PACKAGE_MEDIA[0] not in accept else None
        return StreamingResponse(
            stream_package(ctx.sessions, version.id), media_type=media or _PACKAGE_MEDIA[0], headers=headers
        )

    return await tx.read(work)


@router.post(
    "/processes/{process_id:uuid}/versions/{version_id:uuid}/make-current",
    summary="New jobs take this version from now on",
)
async def make_current(
    process_id: uuid.UUID, version_id: uuid.UUID, tx: Transaction, principal: Update
) -> schemas.VersionOut:
    async def work(session: AsyncSession) -> schemas.VersionOut:
        process, version = await service.make_current(session, principal, process_id, version_id)
        return service.version_out(process, version)

    return await tx.run(work)


@router.delete(
    "/processes/{process_id:uuid}/versions/{version_id:uuid}",
    status_code=204,
    summary="Delete a version (refused for the current version and while jobs use it)",
    responses={409: {"description": "the current version, or jobs use it"}},
)
async def delete_version(
    process_id: uuid.UUID, version_id: uuid.UUID, tx: Transaction, principal: Delete
) -> Response:
    await tx.run(lambda session: service.delete_version(session, principal, process_id, version_id))
    return Response(status_code=204)
