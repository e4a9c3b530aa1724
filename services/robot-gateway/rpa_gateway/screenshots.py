"""``POST /robot/v1/screenshots``: a robot uploads a screenshot of one of its jobs.

Authenticated with the robot key, like package downloads. The body is multipart/form-data
(``rpa_protocol.http.SCREENSHOTS_PATH``). The type comes from the bytes (PNG or JPEG magic), never
from the file name or the part's Content-Type: anything else is 415 and nothing is stored. Larger
than ``RPA_SCREENSHOT_MAX_BYTES``: 413, found while reading (the body is never held whole beyond
the limit). The job must be this robot's (else 404, as for any id the robot may not see).

The bytes go to the blob store first, then the row is committed. The robot makes the screenshot's
id and retries until it gets an answer, so a crash between the two leaves a blob that the retry
overwrites and then references; an upload of an id already stored answers 200 with what is stored.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from rpa_common.blobs import JPEG, BlobStore, blob_store, sniff_image
from rpa_common.errors import (
    Conflict,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unprocessable,
    UnsupportedMediaType,
)
from rpa_common.metrics import SCREENSHOTS_STORED
from rpa_common.models import Job, Screenshot
from rpa_common.service import ServiceContext
from rpa_protocol.http import SCREENSHOTS_PATH, ScreenshotStored

log = logging.getLogger(__name__)

_FORM_OVERHEAD = 64 * 1024
"""Bytes a multipart body may carry beyond the file: boundaries, part headers, the small fields."""


def _uuid(value: Any, name: str, *, required: bool) -> uuid.UUID | None:
    if value is None or value == "":
        if required:
            raise Unprocessable(f"{name} is required", field=name)
        return None
    if not isinstance(value, str):
        raise Unprocessable(f"{name} must be a form field, not a file", field=name)
    try:
        return uuid.UUID(value)
    except ValueError:
        raise Unprocessable(f"{name} is not a UUID", field=name) from None


def _when(value: Any) -> datetime:
    if value is None or value == "":
        return datetime.now(UTC)
    if not isinstance(value, str):
        raise Unprocessable("at must be a form field", field="at")
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise Unprocessable("at is not an ISO 8601 time", field="at") from None
    if at.tzinfo is None:
        raise Unprocessable("at must carry a time zone", field="at")
    return at.astimezone(UTC)


async def _read_form(request: Request, limit: int) -> tuple[bytes, dict[str, Any]]:
    """(file bytes, other fields), refusing a body larger than the limit as it arrives."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaType("the body must be multipart/form-data with a 'file' part", field="file")
    cap = limit + _FORM_OVERHEAD
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise PayloadTooLarge(f"a screenshot may be at most {limit} bytes", field="file", max_bytes=limit)

    async def capped() -> AsyncGenerator[bytes, None]:
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > cap:
                raise PayloadTooLarge(
                    f"a screenshot may be at most {limit} bytes", field="file", max_bytes=limit
                )
            yield chunk

    try:
        form = await MultiPartParser(request.headers, capped(), max_files=1, max_fields=10).parse()
    except MultiPartException as exc:
        raise Unprocessable(f"unreadable multipart body: {exc.message}", field="file") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise Unprocessable("the 'file' part (the image) is required", field="file")
        data = await upload.read()
        fields = {k: v for k, v in form.items() if k != "file"}
    finally:
        await form.close()
    if len(data) > limit:
        raise PayloadTooLarge(f"a screenshot may be at most {limit} bytes", field="file", max_bytes=limit)
    return data, fields


def _stored(row: Screenshot) -> ScreenshotStored:
    assert row.job_id is not None
    return ScreenshotStored(
        id=row.id,
        job_id=row.job_id,
        message_id=row.message_id,
        content_type=row.content_type,
        size=row.size,
        width=row.width,
        height=row.height,
        at=row.at,
    )


def _answer(row: Screenshot, status: int) -> JSONResponse:
    return JSONResponse(_stored(row).model_dump(mode="json"), status_code=status)


def install(app: FastAPI, robot_from: Callable[[ServiceContext, str | None], Awaitable[Any]]) -> None:
    """Add the upload route to the gateway's app (``robot_from``: the robot key check)."""
    blobs: dict[str, BlobStore] = {}

    def store_of(ctx: ServiceContext) -> BlobStore:
        if "store" not in blobs:
            blobs["store"] = blob_store(ctx.settings)
        return blobs["store"]

    @app.post(
        SCREENSHOTS_PATH,
        summary="Upload a screenshot of one of the robot's jobs (robot key; PNG or JPEG)",
        status_code=201,
        response_model=ScreenshotStored,
    )
    async def upload_screenshot(request: Request) -> JSONResponse:
        ctx: ServiceContext = request.app.state.ctx
        robot = await robot_from(ctx, request.headers.get("authorization"))
        limit = ctx.settings.screenshot_max_bytes
        data, fields = await _read_form(request, limit)
        job_id = _uuid(fields.get("job_id"), "job_id", required=True)
        assert job_id is not None
        shot_id = _uuid(fields.get("id"), "id", required=False) or uuid.uuid4()
        message_id = _uuid(fields.get("message_id"), "message_id", required=False)
        at = _when(fields.get("at"))
        sniffed = sniff_image(data)
        if sniffed is None:
            raise UnsupportedMediaType(
                "the file is neither PNG nor JPEG (the type is read from its bytes, not its name)",
                field="file",
            )
        content_type, width, height = sniffed
        try:
            async with ctx.sessions() as session:
                job = await session.get(Job, job_id)
                if job is None or job.robot_id != robot.id or job.account_id != robot.account_id:
                    raise NotFound.of("job", job_id, field="job_id")
                existing = await session.get(Screenshot, shot_id)
        except SQLAlchemyError as exc:
            raise ServiceUnavailable("the gateway cannot reach its database; retry later") from exc
        if existing is not None:
            if existing.robot_id != robot.id or existing.job_id != job_id:
                raise Conflict(f"screenshot {shot_id} exists for another job", field="id")
            return _answer(existing, 200)  # a retried upload: stored once
        key = f"screenshots/{robot.account_id}/{shot_id}.{'jpg' if content_type == JPEG else 'png'}"
        store = store_of(ctx)
        try:
            await store.put(key, data, content_type)
        except Exception as exc:  # any failure of the store (disk, S3...): the robot retries later
            log.warning("blob store refused screenshot %s: %s", shot_id, type(exc).__name__)
            raise ServiceUnavailable("the blob store is unavailable; retry later") from exc
        row = Screenshot(
            id=shot_id,
            account_id=robot.account_id,
            robot_id=robot.id,
            job_id=job_id,
            message_id=message_id,
            content_type=content_type,
            size=len(data),
            width=width,
            height=height,
            blob_key=key,
            at=at,
            received_at=datetime.now(UTC),
        )
        try:
            async with ctx.sessions() as session, session.begin():
                session.add(row)
        except IntegrityError:
            # The same id committed meanwhile by a parallel retry: the blob is the same bytes.
            async with ctx.sessions() as session:
                again = await session.get(Screenshot, shot_id)
            if again is None or again.robot_id != robot.id:
                raise Conflict(f"screenshot {shot_id} exists for another job", field="id") from None
            return _answer(again, 200)
        except SQLAlchemyError as exc:
            try:
                await store.delete([key])
            except Exception:  # the robot's retry writes the same key again
                log.warning("could not remove blob %s after a failed insert", key)
            raise ServiceUnavailable("the gateway cannot reach its database; retry later") from exc
        SCREENSHOTS_STORED.inc()
        return _answer(row, 201)
