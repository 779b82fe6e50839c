"""A job's result as a chart: which chart, and the thresholds its lines are drawn at (from
the request: a report does not repeat them)."""

from collections.abc import Callable
from typing import Any, cast

from service.diagnostics.compare import merge_patch
from service.plots.canvas import Chart, ImageFormat, draw
from service.plots.layers import compare_chart, diagnosis_chart
from service.plots.sweep import sweep_chart
from service.schemas.jobs import CompareJob, DiagnosticsJob, JobRequest
from service.schemas.reports import CompareReport, DiagnosticsReport
from service.schemas.requests import Thresholds
from service.schemas.sweeps import SweepReport


def thresholds_of(request: dict[str, Any]) -> Thresholds:
    """The thresholds of a request as posted (a compare's variant, a sweep's base); the run
    has validated them."""
    return Thresholds.model_validate(request.get("thresholds") or {})


def chart(job: JobRequest, result: Any) -> Chart:
    """The chart of a finished job's result."""
    if isinstance(job, DiagnosticsJob):
        return diagnosis_chart(cast(DiagnosticsReport, result), job.request.thresholds)
    if isinstance(job, CompareJob):
        base = job.request.base_document  # as posted: the variants patch its JSON
        per_variant = {
            name: thresholds_of(merge_patch(base, patch))
            for name, patch in job.request.variants.items()
        }
        return compare_chart(cast(CompareReport, result), per_variant)
    # A swept threshold moves no line: the lines are the base request's.
    return sweep_chart(cast(SweepReport, result), job.request.base.thresholds)


def render(job: JobRequest, result: Any, image: ImageFormat) -> bytes:
    """SVG or PNG bytes; the same result gives the same bytes. Blocking: call it off the
    event loop."""
    build: Callable[[], Chart] = lambda: chart(job, result)  # noqa: E731
    return draw(build, image)
