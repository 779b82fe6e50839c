"""Plans requests against the settings and hands them to the worker."""

from pydantic import ValidationError

from service.config import Settings
from service.diagnostics.compare import merge_patch
from service.diagnostics.plan import RunPlan, plan_run
from service.errors import BudgetExceeded, FieldError, InvalidRequest, Loc
from service.schemas.requests import CompareRequest, DiagnosticsRequest
from service.workers.base import CompareTask, DiagnosticsTask, Worker
from service.workers.devices import DevicePolicy


class Runner:
    """The service layer between routes and worker: plan (cheap, may refuse), then submit."""

    def __init__(self, settings: Settings, devices: DevicePolicy, worker: Worker):
        self.settings = settings
        self.devices = devices
        self.worker = worker

    def plan(self, request: DiagnosticsRequest, loc: Loc = ("body",)) -> RunPlan:
        return plan_run(
            request,
            default_device=self.devices.default,
            allowed_devices=self.devices.allowed,
            default_dtype=self.settings.default_dtype,
            limits=self.settings.limits,
            loc=loc,
        )

    def plan_compare(self, request: CompareRequest) -> CompareTask:
        limits = self.settings.limits
        if len(request.variants) > limits.max_variants:
            raise InvalidRequest.at(("body", "variants"), f"at most {limits.max_variants} variants")
        plans = {}
        for name, patch in request.variants.items():
            loc: Loc = ("body", "variants", name)
            try:
                variant = DiagnosticsRequest.model_validate(merge_patch(request.base, patch))
            except ValidationError as exc:
                errors = [
                    FieldError(
                        (*loc, *e["loc"]), f"base merged with '{name}': {e['msg']}", e["type"]
                    )
                    for e in exc.errors()
                ]
                raise InvalidRequest(errors[0].msg, errors=errors) from None
            plans[name] = self.plan(variant, loc)
        flops = sum(p.model.estimate.flops for p in plans.values())
        if flops > limits.max_flops:
            raise BudgetExceeded(
                f"estimated flops of all variants {flops:,} > {limits.max_flops:,}",
                extra={"estimate": {"flops": flops}, "limit": {"flops": limits.max_flops}},
            )
        return CompareTask(plans)

    async def diagnose(self, request: DiagnosticsRequest) -> dict:
        task = DiagnosticsTask(self.plan(request))
        return await self.worker.submit(task, self.settings.request_timeout_s)

    async def compare(self, request: CompareRequest) -> dict:
        task = self.plan_compare(request)
        return await self.worker.submit(task, self.settings.request_timeout_s)
