"""Jobs: any run in the background, its progress, its result, its cancellation."""

import asyncio
import hashlib
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Request
from pydantic import Field
from starlette.responses import Response

from service.api.deps import OwnerDep, RunServiceDep
from service.api.problems import problem_responses
from service.api.runs import RUN_ERRORS, job_response
from service.api.strict_json import StrictJSONRoute
from service.execution.backend import Idempotency
from service.schemas.jobs import Job, JobRequest

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=StrictJSONRoute)

JobId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$", description="as `POST /v1/jobs` gave it")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=255,
        description="the same key with the same body returns the job it started; with "
        "another body, 409",
    ),
]
FOUND_ERRORS = problem_responses(401, 404, 422, 503)


@router.post(
    "",
    operation_id="submit_job",
    status_code=202,
    response_model=Job,
    responses={k: v for k, v in RUN_ERRORS.items() if k not in (202, 504)} | problem_responses(409),
    summary="Start a diagnostics, compare or sweep job",
)
async def submit_job(
    body: JobRequest,
    request: Request,
    runs: RunServiceDep,
    owner: OwnerDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Check the request as its synchronous route does (a bad one is refused the same way),
    start it and answer 202 at once with the job and its address in `Location`. Compare
    variants and sweep points run side by side where workers are."""
    large = getattr(request.state, "large", False)
    idempotency = None
    if idempotency_key is not None:
        digest = await asyncio.to_thread(_body_sha256, body) if large else _body_sha256(body)
        idempotency = Idempotency(idempotency_key, digest)
    job, replayed = await runs.submit(body, owner, idempotency, ("body", "request"), large)
    return job_response(job, 202, {"Idempotent-Replayed": "true"} if replayed else None)


def _body_sha256(body: JobRequest) -> str:
    """The same request, however its keys were ordered, has the same digest."""
    canonical = orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


@router.get(
    "/{job_id}",
    operation_id="get_job",
    response_model=Job,
    responses=FOUND_ERRORS,
    summary="A job's status, progress and result",
)
async def get_job(job_id: JobId, runs: RunServiceDep, owner: OwnerDep) -> Response:
    """`status` is queued, running, succeeded, failed or cancelled; `progress` counts the
    runs finished; `result` is what the synchronous route answers, `error` the problem it
    would have answered with. Jobs of another API key are not found."""
    return job_response(await runs.job(job_id, owner))


@router.delete(
    "/{job_id}",
    operation_id="cancel_job",
    response_model=Job,
    responses=FOUND_ERRORS,
    summary="Cancel a job",
)
async def cancel_job(job_id: JobId, runs: RunServiceDep, owner: OwnerDep) -> Response:
    """Runs not started never start; a running one stops at its next layer. The answer is
    the job as it stands: poll it until `status` is `cancelled`."""
    return job_response(await runs.cancel(job_id, owner))
