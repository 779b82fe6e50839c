"""Jobs: a diagnostics, compare or sweep request run in the background and fetched later."""

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from service.schemas.common import StrictModel
from service.schemas.reports import CompareReport, DiagnosticsReport
from service.schemas.requests import LESSON_REQUEST, CompareRequest, DiagnosticsRequest
from service.schemas.sweeps import SweepReport, SweepRequest

JobKind = Literal["diagnostics", "compare", "sweep"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[JobStatus] = frozenset({"succeeded", "failed", "cancelled"})


class DiagnosticsJob(StrictModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"kind": "diagnostics", "request": LESSON_REQUEST}]}
    )

    kind: Literal["diagnostics"]
    request: DiagnosticsRequest


class CompareJob(StrictModel):
    kind: Literal["compare"]
    request: CompareRequest


class SweepJob(StrictModel):
    kind: Literal["sweep"]
    request: SweepRequest


# What `POST /v1/jobs` takes: the kind of run and the body its synchronous route takes.
JobRequest = Annotated[DiagnosticsJob | CompareJob | SweepJob, Field(discriminator="kind")]


class JobProgress(TypedDict):
    done: Annotated[int, Field(description="runs finished")]
    total: Annotated[int, Field(description="runs of the job (variants, sweep points)")]


class Job(TypedDict):
    """A job as its owner sees it. `result` equals what the synchronous route answers;
    `error` is the problem document it would have answered with."""

    id: str
    kind: JobKind
    status: JobStatus
    progress: JobProgress
    created_at: Annotated[str, Field(description="RFC 3339, UTC")]
    started_at: str | None
    finished_at: str | None
    result: DiagnosticsReport | CompareReport | SweepReport | None
    error: dict[str, Any] | None
