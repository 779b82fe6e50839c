"""The service layer between the routes and the backend: checks each request (and each
compare variant and sweep point) against the architecture and the budget, then submits it."""

import math
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from service.architectures.registry import TAG_VALUES
from service.config import Settings
from service.diagnostics.compare import merge_patch
from service.diagnostics.plan import RunPlan, plan_run
from service.diagnostics.sweep import expand, path_keys
from service.errors import (
    BudgetExceeded,
    FieldError,
    GradiagError,
    InvalidRequest,
    Loc,
    pydantic_field_errors,
)
from service.execution.backend import Backend, CompareTask, DiagnosticsTask, SweepTask
from service.execution.devices import DevicePolicy
from service.schemas.reports import CompareReport, DiagnosticsReport
from service.schemas.requests import CompareRequest, DiagnosticsRequest
from service.schemas.sweeps import SweepReport, SweepRequest

BASE: Loc = ("body", "base")


def _at_axis_values(error: GradiagError, request: SweepRequest, choice: tuple[int, ...]) -> Any:
    """Errors inside a swept field point at the axis value that put it there."""
    errors = []
    for field in error.errors:
        loc = field.loc
        for index, (axis, value_index) in enumerate(zip(request.axes, choice, strict=True)):
            keys = path_keys(axis.path)
            if loc[len(BASE) : len(BASE) + len(keys)] == keys:
                rest = loc[len(BASE) + len(keys) :]
                loc = ("body", "axes", index, "values", value_index, *rest)
        errors.append(FieldError(loc, field.msg, field.type))
    error.errors = errors
    return error


class RunService:
    """Check (pure and cheap: may refuse before anything is allocated), then submit."""

    def __init__(self, settings: Settings, devices: DevicePolicy, backend: Backend):
        self.settings = settings
        self.devices = devices
        self.backend = backend

    def check(self, request: DiagnosticsRequest, loc: Loc = ("body",)) -> RunPlan:
        return plan_run(
            request,
            default_device=self.devices.default,
            allowed_devices=self.devices.allowed,
            default_dtype=self.settings.default_dtype,
            limits=self.settings.limits,
            loc=loc,
        )

    def _check_document(self, document: dict[str, Any], loc: Loc, origin: str) -> RunPlan:
        """Validate a derived request (a merged variant, a sweep point) and check it."""
        try:
            request = DiagnosticsRequest.model_validate(document)
        except ValidationError as exc:
            errors = pydantic_field_errors(exc.errors(), document, loc, TAG_VALUES)
            raise InvalidRequest(f"{origin}: {errors[0].msg}", errors=errors) from None
        return self.check(request, loc)

    def _check_total(self, plans: Iterable[RunPlan], what: str) -> None:
        """Runs of one request count against the FLOP budget together."""
        flops = sum(p.model.estimate.flops for p in plans)
        limit = self.settings.limits.max_flops
        if flops > limit:
            raise BudgetExceeded(
                f"estimated flops of all {what} {flops:,} > {limit:,}",
                extra={"estimate": {"flops": flops}, "limit": {"flops": limit}},
            )

    def check_compare(self, request: CompareRequest) -> CompareTask:
        limit = self.settings.limits.max_variants
        if len(request.variants) > limit:
            raise InvalidRequest.at(("body", "variants"), f"at most {limit} variants")
        plans = {
            name: self._check_document(
                merge_patch(request.base, patch),
                ("body", "variants", name),
                f"base merged with variant '{name}'",
            )
            for name, patch in request.variants.items()
        }
        self._check_total(plans.values(), "variants")
        return CompareTask(plans)

    def check_sweep(self, request: SweepRequest) -> SweepTask:
        count = math.prod(len(axis.values) for axis in request.axes)
        limit = self.settings.limits.max_sweep_runs
        if count > limit:
            raise BudgetExceeded(
                f"the axes make {count} runs; at most {limit}",
                errors=[],
                extra={"estimate": {"runs": count}, "limit": {"runs": limit}},
            )
        runs = []
        for choice, document in expand(request.base, request.axes):
            axes = {a.path: a.values[i] for a, i in zip(request.axes, choice, strict=True)}
            try:
                runs.append((axes, self._check_document(document, BASE, f"sweep point {axes}")))
            except GradiagError as error:
                raise _at_axis_values(error, request, choice) from None
        self._check_total((plan for _, plan in runs), "sweep runs")
        return SweepTask(runs)

    async def diagnose(self, request: DiagnosticsRequest) -> DiagnosticsReport:
        task = DiagnosticsTask(self.check(request))
        report: DiagnosticsReport = await self.backend.submit(task, self._timeout)
        return report

    async def compare(self, request: CompareRequest) -> CompareReport:
        task = self.check_compare(request)
        report: CompareReport = await self.backend.submit(task, self._timeout)
        return report

    async def sweep(self, request: SweepRequest) -> SweepReport:
        report: SweepReport = await self.backend.submit(self.check_sweep(request), self._timeout)
        return report

    @property
    def _timeout(self) -> float:
        return self.settings.request_timeout_s
