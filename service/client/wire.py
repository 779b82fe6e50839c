"""What the synchronous and asynchronous clients share: where each call goes, how a request
is sent and how an answer is read, with the models the server answers with."""

import json
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from pydantic import BaseModel, TypeAdapter

from service.api.routes.meta import Capabilities
from service.client.problem import GradiagProblem
from service.config import Settings
from service.schemas.jobs import Job, JobKind, JobProgress
from service.schemas.reports import CompareReport, DiagnosticsReport
from service.schemas.requests import CompareRequest
from service.schemas.sweeps import SweepReport, SweepRequest

# A request: the server's own model, or its JSON as Python data (the server judges it).
RequestBody = BaseModel | Mapping[str, Any]
Progress = Callable[[JobProgress], None]

ROUTES: dict[JobKind, str] = {
    "diagnostics": "/v1/diagnostics",
    "compare": "/v1/diagnostics/compare",
    "sweep": "/v1/sweeps",
}
JOBS = "/v1/jobs"
CAPABILITIES = "/v1/capabilities"

DIAGNOSTICS_REPORT = TypeAdapter(DiagnosticsReport)
COMPARE_REPORT = TypeAdapter(CompareReport)
SWEEP_REPORT = TypeAdapter(SweepReport)
JOB = TypeAdapter(Job)


def connection(base_url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    """The base URL and headers: the arguments, else `GRADIAG_URL` and `GRADIAG_API_KEY`
    (an empty key sends none)."""
    if base_url is None or api_key is None:
        settings = Settings()
        base_url = base_url or settings.url
        if api_key is None and settings.api_key is not None:
            api_key = settings.api_key.get_secret_value()
    if not base_url:
        raise ValueError(
            "no server: pass base_url or set GRADIAG_URL "
            "(service.client.local runs the service in this process)"
        )
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return base_url, headers


def kind_of(request: RequestBody) -> JobKind:
    """Which route a request is for: a compare has `variants`, a sweep `axes`."""
    if isinstance(request, CompareRequest):
        return "compare"
    if isinstance(request, SweepRequest):
        return "sweep"
    if isinstance(request, Mapping):
        if "variants" in request:
            return "compare"
        if "axes" in request:
            return "sweep"
    return "diagnostics"


def plain(request: RequestBody) -> Any:
    """A request as JSON data: a model as its fields that were set, so that the server's
    defaults apply to the others, as they would to a request written by hand."""
    if isinstance(request, BaseModel):
        return request.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return request


def encode(body: Any) -> bytes:
    """JSON as written: NaN is sent as such, for the server to refuse with its location."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def job_body(request: RequestBody, kind: JobKind | None) -> dict[str, Any]:
    return {"kind": kind or kind_of(request), "request": plain(request)}


def job_id(job: Job | str) -> str:
    return job if isinstance(job, str) else job["id"]


def capabilities(response: httpx.Response) -> Capabilities:
    return Capabilities.model_validate_json(response.content)


def result(job: Job) -> Any:
    """A finished job's result; a cancelled one is a problem."""
    if job["status"] == "succeeded":
        return job["result"]
    if job["status"] == "failed":
        raise GradiagProblem(job["error"] or {"title": "Job failed", "code": "failed"})
    raise GradiagProblem(
        {
            "type": "urn:gradiag:problem:cancelled",
            "title": "Job cancelled",
            "detail": f"job {job['id']} was cancelled before it finished",
            "code": "cancelled",
        }
    )


def image(response: httpx.Response, media_type: str) -> bytes:
    """A plot's bytes; a problem where the server answered something else."""
    answered = response.headers.get("content-type", "").split(";")[0].strip()
    if answered != media_type:
        raise GradiagProblem(
            {
                "title": "This server cannot draw plots",
                "detail": f"answered {answered or 'no content type'} to Accept: {media_type}",
                "code": "plots_unsupported",
            }
        )
    return response.content
