"""Jobs endpoints: create (idempotent with ``Idempotency-Key``), list, read with history, stop, interrupt.

Writes commit through ``Tx.run``; the NATS events (``JOB_CREATED``, ``JOB_STATE``, ``JOB_CONTROL``)
are published only after the commit, and are hints: the scheduler and the gateway also recover
from the database.
"""

from __future__ import annotations

import uuid
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Header, Query, Response, status
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from rpa_api.deps import Ctx, Principal, Transaction, require
from rpa_api.jobs import explain, service
from rpa_api.jobs.schemas import JobCreate, JobDetail, JobEventOut, JobExplain, JobOut
from rpa_api.kit.pagination import Page, PageParams, page_json, paginate, sorted_by
from rpa_api.kit.schemas import QueryDatetime
from rpa_common import jobflow
from rpa_common.errors import Conflict
from rpa_common.models.enums import JobSource, JobState
from rpa_common.models.enums import PermissionAction as A
from rpa_common.models.enums import PermissionObject as O
from rpa_common.nats import subjects
from rpa_common.nats.messages import JobControl
from rpa_common.service import ServiceContext

router = APIRouter(prefix="/jobs")
log = structlog.get_logger(__name__)

Reader = Annotated[Principal, Depends(require(O.JOBS, A.READ))]
Runner = Annotated[Principal, Depends(require(O.JOBS, A.RUN))]

_PROBLEMS: dict[int | str, dict[str, str]] = {
    401: {"description": "No, a forged or an expired token"},
    403: {"description": "Missing permission"},
    404: {"description": "No such job (or object named by a field) in your account"},
}


def _location(job_id: uuid.UUID) -> str:
    return f"/api/v1/jobs/{job_id}"


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobOut,
    summary="Start a job: a process on a robot or on any robot of a group",
    responses={
        **_PROBLEMS,
        200: {"description": "Replayed: this Idempotency-Key and body created this job before"},
        409: {
            "description": "No current version, inactive robot, or Idempotency-Key reused with another body"
        },
        422: {"description": "A field is missing, unknown, of the wrong type or out of range"},
    },
)
async def create_job(
    body: JobCreate,
    response: Response,
    ctx: Ctx,
    tx: Transaction,
    principal: Runner,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="Repeat a call safely: the same key and body answer the same job",
        ),
    ] = None,
) -> JobOut:
    body.check(ctx.settings.max_json_bytes)
    request_hash = body.fingerprint()
    job_id = uuid.uuid4()  # outside the closure: a re-run after a lost commit finds this job

    async def work(session: AsyncSession) -> service.Created:
        return await service.create_job(
            session,
            principal,
            body,
            job_id=job_id,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
        )

    try:
        created = await tx.run(work)
    except IntegrityError:
        if idempotency_key is None:
            # A referenced row vanished between our checks and the insert (e.g. a deleted version).
            raise Conflict("the process, version, robot or group changed meanwhile; try again") from None

        async def answer_from_winner(session: AsyncSession) -> service.Created:
            existing = await service.find_by_key(session, principal, idempotency_key)
            if existing is None:
                raise Conflict("the process, version, robot or group changed meanwhile; try again")
            return await service.replay(session, principal, existing, request_hash)

        # A concurrent request with the same key won the unique key: answer its job.
        log.info("job.idempotency_race", job_id=str(job_id))
        created = await tx.run(answer_from_winner)

    job = created.job
    response.headers["Location"] = _location(job.id)
    if created.replayed:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    else:
        await ctx.publish(subjects.JOB_CREATED, jobflow.created_message(job).encode())
    return JobOut.model_validate(job)


@router.get("", response_model=Page[JobOut], summary="List jobs", responses=_PROBLEMS)
async def list_jobs(
    tx: Transaction,
    principal: Reader,
    paging: Annotated[PageParams, Depends(sorted_by(*service.SORTABLE))],
    state: Annotated[list[JobState] | None, Query(description="Any of these states (repeatable)")] = None,
    process_id: uuid.UUID | None = None,
    robot_id: uuid.UUID | None = None,
    robot_group_id: uuid.UUID | None = None,
    source: Annotated[list[JobSource] | None, Query(description="Any of these sources (repeatable)")] = None,
    created_from: Annotated[
        QueryDatetime | None, Query(description="Created at or after (ISO 8601; UTC if no zone)")
    ] = None,
    created_to: Annotated[
        QueryDatetime | None, Query(description="Created at or before (ISO 8601; UTC if no zone)")
    ] = None,
) -> Response:
    async def work(session: AsyncSession) -> Response:
        stmt = service.list_jobs_query(
            principal,
            state=state,
            process_id=process_id,
            robot_id=robot_id,
            robot_group_id=robot_group_id,
            source=source,
            created_from=created_from,
            created_to=created_to,
        )
        rows, total = await paginate(
            session, stmt, paging, sortable=service.SORTABLE, default_sort="-created_at", columns_of=JobOut
        )
        return page_json(JobOut, rows, total, paging)

    return await tx.read(work)


@router.get(
    "/{job_id:uuid}", response_model=JobDetail, summary="A job with its state history", responses=_PROBLEMS
)
async def get_job(job_id: uuid.UUID, tx: Transaction, principal: Reader) -> JobDetail:
    async def work(session: AsyncSession) -> JobDetail:
        job = await service.get_job(session, principal, job_id)
        events = await service.history(session, job.id)
        return JobDetail.model_validate(
            {
                **JobOut.model_validate(job).model_dump(),
                "history": [JobEventOut.model_validate(e) for e in events],
            }
        )

    return await tx.read(work)


@router.get(
    "/{job_id:uuid}/explain",
    response_model=JobExplain,
    response_model_exclude_none=True,
    summary="Why is this job pending? What it waits for, in words and in fields",
    description="Reads the robots, groups, terminal servers and licenses with the dispatcher's rules. "
    "Each reason has a stable `code` (see the API guide); a job that is not Pending answers its state.",
    responses=_PROBLEMS,
)
async def explain_job(job_id: uuid.UUID, ctx: Ctx, tx: Transaction, principal: Reader) -> JobExplain:
    async def work(session: AsyncSession) -> JobExplain:
        job = await service.get_job(session, principal, job_id)
        return await explain.explain(session, ctx.settings, job, principal.folder_clause)

    return await tx.read(work)


async def _control(
    ctx: ServiceContext, tx: Transaction, principal: Principal, job_id: uuid.UUID, command: service.Command
) -> service.Controlled:
    async def work(session: AsyncSession) -> service.Controlled:
        return await service.control(session, principal, job_id, command)

    done = await tx.run(work)
    job = done.job
    if done.transition is not None:
        await ctx.publish(subjects.JOB_STATE, done.transition.message().encode())
        for created in done.transition.created:  # jobs its end started (job completion triggers)
            await ctx.publish(subjects.JOB_CREATED, created.encode())
    if done.tell_robot:
        # Sent again on a repeated request too: the repeat is how a person retries a command
        # whose message was lost; the robot ignores a command it is already carrying out.
        await ctx.publish(
            subjects.JOB_CONTROL,
            JobControl(
                account_id=job.account_id,
                job_id=job.id,
                robot_id=job.robot_id,
                attempt=job.attempt,
                command=command,
            ).encode(),
        )
    return done


_CONTROL_RESPONSES: dict[int | str, dict[str, str]] = {
    **_PROBLEMS,
    200: {"description": "The job ended at once (it had not started), or already carries out the command"},
    202: {"description": "The robot is told; the job is Stopping / Interrupting until it reports back"},
    409: {"description": "The job already ended"},
}


@router.post(
    "/{job_id:uuid}/stop",
    response_model=JobOut,
    summary="Ask a job to stop (soft): the script is asked to finish",
    responses=_CONTROL_RESPONSES,
)
async def stop_job(
    job_id: uuid.UUID, response: Response, ctx: Ctx, tx: Transaction, principal: Runner
) -> JobOut:
    done = await _control(ctx, tx, principal, job_id, "stop")
    response.status_code = status.HTTP_202_ACCEPTED if done.tell_robot else status.HTTP_200_OK
    return JobOut.model_validate(done.job)


@router.post(
    "/{job_id:uuid}/interrupt",
    response_model=JobOut,
    summary="Interrupt a job (hard): the script is killed",
    responses=_CONTROL_RESPONSES,
)
async def interrupt_job(
    job_id: uuid.UUID, response: Response, ctx: Ctx, tx: Transaction, principal: Runner
) -> JobOut:
    done = await _control(ctx, tx, principal, job_id, "interrupt")
    response.status_code = status.HTTP_202_ACCEPTED if done.tell_robot else status.HTTP_200_OK
    return JobOut.model_validate(done.job)
