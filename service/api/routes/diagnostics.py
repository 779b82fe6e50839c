"""Diagnostics runs: one model, or a base and its variants."""

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.api.deps import OwnerDep, PreferHeader, RunServiceDep
from service.api.runs import REPORT_RESPONSES, answer
from service.api.strict_json import StrictJSONRoute
from service.schemas.jobs import CompareJob, DiagnosticsJob
from service.schemas.reports import CompareReport, DiagnosticsReport
from service.schemas.requests import CompareRequest, DiagnosticsRequest

router = APIRouter(prefix="/v1/diagnostics", tags=["diagnostics"], route_class=StrictJSONRoute)


@router.post(
    "",
    operation_id="run_diagnostics",
    response_model=DiagnosticsReport,
    responses=REPORT_RESPONSES,
    summary="Diagnose gradient flow in one model",
)
async def run_diagnostics(
    body: DiagnosticsRequest,
    request: Request,
    runs: RunServiceDep,
    owner: OwnerDep,
    prefer: PreferHeader = None,
) -> Response:
    """Build the model described by `model` with weights drawn as after
    `torch.manual_seed(seed)`, run one forward pass on `input`, the `loss` against `target`
    and one backward pass, and report per-parameter gradient and value statistics,
    per-layer output and output-gradient statistics, a verdict per layer relative to the
    last layer, and the provenance of the numbers.

    The numbers equal those of plain PyTorch code building the same modules after
    `torch.manual_seed(seed)`. NaN or infinite statistics are `null`, with counts and a
    finding. Requests that do not fit the architecture or the budget are refused with 422
    before anything is allocated.

    Past the server's request deadline the answer is 504 with the job's address, where the
    run goes on; with `Prefer: respond-async` it is 202 with the job at once.
    """
    job = DiagnosticsJob(kind="diagnostics", request=body)
    return await answer(request, runs, job, owner, prefer)


@router.post(
    "/compare",
    operation_id="compare_diagnostics",
    response_model=CompareReport,
    responses=REPORT_RESPONSES,
    summary="Diagnose variants of a model side by side",
)
async def compare_diagnostics(
    body: CompareRequest,
    request: Request,
    runs: RunServiceDep,
    owner: OwnerDep,
    prefer: PreferHeader = None,
) -> Response:
    """Run each variant (the base request with the variant's JSON Merge Patch, RFC 7386,
    applied) and report every run under `runs.<variant>`, plus, per parameter and per
    layer, each variant's mean |gradient| divided by the first variant's.

    The lesson's experiment is one call: variants `{"plain": {"model": {"shortcut": false}},
    "shortcut": {"model": {"shortcut": true}}}`.
    """
    job = CompareJob(kind="compare", request=body)
    return await answer(request, runs, job, owner, prefer)
