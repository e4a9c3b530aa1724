"""Screenshots endpoints: a job's screenshots, one's metadata, its image.

Read-only here: robots upload through the gateway (``POST /robot/v1/screenshots``), and retention
removes them (``screenshot_retention_days`` of the account). The permission is the one to read jobs.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Ctx, Principal, Transaction, require
from rpa_api.jobs import service as jobs
from rpa_api.kit.pagination import Page, PageParams, paginate, sorted_by
from rpa_api.screenshots import service
from rpa_api.screenshots.schemas import ScreenshotOut
from rpa_common.blobs import shared_blob_store
from rpa_common.errors import NotFound, ServiceUnavailable
from rpa_common.models import Screenshot
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O

router = APIRouter()

Reader = Annotated[Principal, Depends(require(O.JOBS, A.READ))]

_PROBLEMS: dict[int | str, dict[str, str]] = {
    401: {"description": "No, a forged or an expired token"},
    403: {"description": "Missing permission"},
    404: {"description": "No such job or screenshot in your account (or not in your folders)"},
}


@router.get(
    "/jobs/{job_id:uuid}/screenshots",
    response_model=Page[ScreenshotOut],
    summary="The screenshots of a job, oldest first",
    responses=_PROBLEMS,
)
async def list_screenshots(
    job_id: uuid.UUID,
    tx: Transaction,
    principal: Reader,
    paging: Annotated[PageParams, Depends(sorted_by("at"))],
) -> Page[ScreenshotOut]:
    async def work(session: AsyncSession) -> Page[ScreenshotOut]:
        job = await jobs.get_job(session, principal, job_id)  # 404 for a job the caller cannot see
        rows, total = await paginate(
            session,
            service.of_job(principal, job.id),
            paging,
            sortable={"at": Screenshot.at},
            default_sort="at",
            columns_of=ScreenshotOut,
        )
        return Page[ScreenshotOut](
            items=[ScreenshotOut.model_validate(r) for r in rows],
            total=total,
            limit=paging.limit,
            offset=paging.offset,
        )

    return await tx.read(work)


@router.get(
    "/screenshots/{screenshot_id:uuid}",
    response_model=ScreenshotOut,
    summary="A screenshot's metadata",
    responses=_PROBLEMS,
)
async def get_screenshot(screenshot_id: uuid.UUID, tx: Transaction, principal: Reader) -> ScreenshotOut:
    async def work(session: AsyncSession) -> ScreenshotOut:
        return ScreenshotOut.model_validate(await service.get_screenshot(session, principal, screenshot_id))

    return await tx.read(work)


_IMAGE_MEDIA = ("image/png", "image/jpeg", "application/octet-stream")


@router.get(
    "/screenshots/{screenshot_id:uuid}/content",
    response_class=Response,
    summary="A screenshot's image (image/png or image/jpeg)",
    responses={
        **_PROBLEMS,
        200: {
            "description": "The image: `image/png` or `image/jpeg` as it is, or `application/octet-stream` "
            "when the request's Accept asks for that and for no image type",
            "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in _IMAGE_MEDIA},
        },
        503: {"description": "The blob store does not answer; retry later"},
    },
)
async def screenshot_content(
    screenshot_id: uuid.UUID, tx: Transaction, principal: Reader, ctx: Ctx, request: Request
) -> Response:
    async def work(session: AsyncSession) -> Screenshot:
        return await service.get_screenshot(session, principal, screenshot_id)

    shot = await tx.read(work)
    try:
        data = await shared_blob_store(ctx.settings).get(shot.blob_key)
    except Exception as exc:  # disk or S3 trouble is not the client's: 503, retry
        raise ServiceUnavailable("the blob store does not answer; retry later") from exc
    if data is None:
        raise NotFound(f"the image of screenshot {screenshot_id} is no longer stored")
    extension = "jpg" if shot.content_type == "image/jpeg" else "png"
    accept = request.headers.get("accept", "")
    octets = "application/octet-stream" in accept and "image/" not in accept
    return Response(
        content=data,
        media_type="application/octet-stream" if octets else shot.content_type,
        headers={
            "Content-Disposition": f'inline; filename="screenshot-{shot.id}.{extension}"',
            "Cache-Control": "private, max-age=3600",
            "X-Content-Type-Options": "nosniff",
        },
    )
