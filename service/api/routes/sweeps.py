"""Sweeps: one request over the cartesian product of axes."""

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.api.deps import OwnerDep, PreferHeader, RunServiceDep
from service.api.runs import REPORT_RESPONSES, answer
from service.api.strict_json import StrictJSONRoute
from service.schemas.jobs import SweepJob
from service.schemas.sweeps import SweepReport, SweepRequest

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"], route_class=StrictJSONRoute)


@router.post(
    "",
    operation_id="run_sweep",
    response_model=SweepReport,
    responses=REPORT_RESPONSES,
    summary="Run a request over a grid of values",
)
async def run_sweep(
    body: SweepRequest,
    request: Request,
    runs: RunServiceDep,
    owner: OwnerDep,
    prefer: PreferHeader = None,
) -> Response:
    """Set every combination of the `axes` values (each axis a dotted `path` into the
    request, e.g. `model.shortcut` or `seed`) into `base`, run each, and list every run with
    its axis values and a per-layer and per-parameter summary. When `seed` is an axis,
    `across_seeds` gives, for each combination of the other axes, the mean and sample
    standard deviation per layer across the seeds.

    The seed experiment generalised: gradient at layer 0 versus depth, with and without
    shortcuts, over five seeds, in one call. The sweep counts against the budget as a whole.
    """
    return await answer(request, runs, SweepJob(kind="sweep", request=body), owner, prefer)
