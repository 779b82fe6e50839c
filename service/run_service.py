"""The service layer between the routes and the backend: checks each request (and each
compare variant and sweep point) against the architecture and the budget, admits it, submits
it as a job, and waits for it where the client waits."""

import asyncio
import math
import time
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from service import logs
from service.architectures.init_schemes import has_layer_init
from service.architectures.registry import TAG_VALUES
from service.config import Settings
from service.diagnostics.compare import merge_patch
from service.diagnostics.plan import RunPlan, plan_run
from service.diagnostics.sweep import expand, path_keys, run_labels
from service.diagnostics.tensors import LiteralChecks
from service.errors import (
    BudgetExceeded,
    FieldError,
    GradiagError,
    InvalidRequest,
    JobCancelled,
    JobFailed,
    JobNotFound,
    Loc,
    Overloaded,
    Timeout,
    pydantic_field_errors,
)
from service.execution.backend import Backend, Idempotency
from service.execution.devices import DevicePolicy
from service.execution.jobs import JobSpec, Result, RunUnit
from service.schemas.jobs import TERMINAL, Job, JobRequest
from service.schemas.requests import CompareRequest, DiagnosticsRequest
from service.schemas.sweeps import SweepRequest

Request = DiagnosticsRequest | CompareRequest | SweepRequest

BODY: Loc = ("body",)


def _at_axis_values(
    error: GradiagError, request: SweepRequest, choice: tuple[int, ...], root: Loc
) -> Any:
    """Errors inside a swept field point at the axis value that put it there."""
    base = (*root, "base")
    errors = []
    for field in error.errors:
        loc = field.loc
        for index, (axis, value_index) in enumerate(zip(request.axes, choice, strict=True)):
            keys = path_keys(axis.path)
            if loc[len(base) : len(base) + len(keys)] == keys:
                rest = loc[len(base) + len(keys) :]
                loc = (*root, "axes", index, "values", value_index, *rest)
        errors.append(FieldError(loc, field.msg, field.type))
    error.errors = errors
    return error


def _joined(values: Iterable[str]) -> str:
    """The distinct values of a job's runs, for its access log line: `mlp`, `mlp,cnn`."""
    return ",".join(sorted(set(values)))


class RunService:
    """Check (pure and cheap: may refuse before anything is allocated), then submit."""

    def __init__(self, settings: Settings, devices: DevicePolicy, backend: Backend):
        self.settings = settings
        self.devices = devices
        self.backend = backend

    def check(
        self, request: DiagnosticsRequest, loc: Loc = BODY, literals: LiteralChecks | None = None
    ) -> RunPlan:
        return plan_run(
            request,
            default_device=self.devices.default,
            allowed_devices=self.devices.allowed,
            default_dtype=self.settings.default_dtype,
            limits=self.settings.limits,
            loc=loc,
            literals=literals,
        )

    def _check_document(
        self, document: dict[str, Any], loc: Loc, origin: str, literals: LiteralChecks
    ) -> RunPlan:
        """Validate a derived request (a merged variant, a sweep point) and check it."""
        try:
            request = DiagnosticsRequest.model_validate(document)
        except ValidationError as exc:
            errors = pydantic_field_errors(exc.errors(), document, loc, TAG_VALUES)
            raise InvalidRequest(f"{origin}: {errors[0].msg}", errors=errors) from None
        return self.check(request, loc, literals)

    def _check_total(self, plans: Iterable[RunPlan], what: str) -> None:
        """Runs of one request count against the FLOP budget together."""
        flops = sum(p.flops for p in plans)
        limit = self.settings.limits.max_flops
        if flops > limit:
            raise BudgetExceeded(
                f"estimated flops of all {what} {flops:,} > {limit:,}",
                extra={"estimate": {"flops": flops}, "limit": {"flops": limit}},
            )

    def check_compare(self, request: CompareRequest, root: Loc = BODY) -> list[RunUnit]:
        limit = self.settings.limits.max_variants
        if len(request.variants) > limit:
            raise InvalidRequest.at((*root, "variants"), f"at most {limit} variants")
        literals = LiteralChecks()
        plans = {
            name: self._check_document(
                merge_patch(request.base_document, patch),
                (*root, "variants", name),
                f"base merged with variant '{name}'",
                literals,
            )
            for name, patch in request.variants.items()
        }
        self._check_total(plans.values(), "variants")
        return [RunUnit(i, {"name": name}, plan) for i, (name, plan) in enumerate(plans.items())]

    def check_sweep(self, request: SweepRequest, root: Loc = BODY) -> list[RunUnit]:
        count = math.prod(len(axis.values) for axis in request.axes)
        limit = self.settings.limits.max_sweep_runs
        if count > limit:
            raise BudgetExceeded(
                f"the axes make {count} runs; at most {limit}",
                errors=[],
                extra={"estimate": {"runs": count}, "limit": {"runs": limit}},
            )
        plans, literals = [], LiteralChecks()
        points = expand(request.base_document, request.axes)
        for choice, document in points:
            where = ", ".join(f"{a.path}[{i}]" for a, i in zip(request.axes, choice, strict=True))
            try:
                plans.append(
                    self._check_document(
                        document, (*root, "base"), f"sweep point {where}", literals
                    )
                )
            except GradiagError as error:
                raise _at_axis_values(error, request, choice, root) from None
        self._check_total(plans, "sweep runs")
        labels = run_labels(request.axes, [choice for choice, _ in points])
        numbered = enumerate(zip(labels, plans, strict=True))
        return [RunUnit(i, label, plan) for i, (label, plan) in numbered]

    def check_job(self, job: JobRequest, owner: str, root: Loc = BODY) -> JobSpec:
        """The job's runs, each checked; a bad request is refused as its route refuses it,
        located under `root` (the body of a synchronous route, `body.request` of a job)."""
        request = job.request
        if isinstance(request, DiagnosticsRequest):
            units = [RunUnit(0, {}, self.check(request, root))]
        elif isinstance(request, CompareRequest):
            units = self.check_compare(request, root)
        else:
            units = self.check_sweep(request, root)
        return JobSpec(job.kind, units, owner)

    async def submit(
        self,
        job: JobRequest,
        owner: str,
        idempotency: Idempotency | None = None,
        root: Loc = BODY,
        large: bool = False,
        deadline: float | None = None,
    ) -> tuple[Job, bool]:
        """Check, admit and start a job; (the job, whether the key replayed an existing one).
        A `large` job (a big body, or several runs) is checked on a thread: pure Python over
        many numbers, during which the event loop keeps answering; so is a model whose
        layers have an `init` of their own, checked against a meta build of the model.
        Past `deadline` (a `time.monotonic()`) once checked, nothing is started: 504."""
        request = job.request
        if large or not isinstance(request, DiagnosticsRequest) or has_layer_init(request.model):
            spec = await asyncio.to_thread(self.check_job, job, owner, root)
        else:
            spec = self.check_job(job, owner, root)
        if deadline is not None and time.monotonic() >= deadline:
            raise Timeout(
                f"no answer within {self.settings.request_timeout_s:g} s: the deadline passed "
                "while the request was received and checked; nothing was started"
            )
        logs.annotate(
            model_kind=_joined(unit.plan.request.model.kind for unit in spec.units),
            device=_joined(unit.plan.device for unit in spec.units),
        )
        await self.backend.ready()
        load = await self.backend.load(spec)
        if load.full:
            wait_s = await self.backend.wait_s(spec, load)
            raise Overloaded(
                f"{load.pending} runs waiting or running, capacity {load.capacity}",
                headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
            )
        return await self.backend.submit(spec, idempotency)

    async def job(self, job_id: str, owner: str) -> Job:
        job = await self.backend.job(job_id, owner)
        if job is None:
            raise JobNotFound(f"no job {job_id}")
        return job

    async def cancel(self, job_id: str, owner: str) -> Job:
        job = await self.backend.cancel(job_id, owner)
        if job is None:
            raise JobNotFound(f"no job {job_id}")
        return job

    async def run(
        self, job: JobRequest, owner: str, arrived: float | None = None, large: bool = False
    ) -> Result:
        """A synchronous request: the job's result, or the problem it failed with; past the
        request's deadline (counted from `arrived`, a `time.monotonic()`, where given) a 504
        that names the job, which goes on. A client that leaves cancels its job."""
        deadline = (arrived or time.monotonic()) + self.settings.request_timeout_s
        submitted, _ = await self.submit(job, owner, large=large, deadline=deadline)
        job_id = submitted["id"]
        try:
            remaining = max(0.0, deadline - time.monotonic())
            finished = await self.backend.wait(job_id, owner, remaining)
        except asyncio.CancelledError:
            await self.backend.cancel(job_id, owner)
            raise
        if finished is None or finished["status"] not in TERMINAL:
            location = f"/v1/jobs/{job_id}"
            raise Timeout(
                f"no answer within {self.settings.request_timeout_s:g} s; the job goes on at "
                f"{location}",
                extra={"job": location},
                headers={"Location": location},
            )
        # Answered here, the job is nobody's to fetch later: it is not kept.
        await self.backend.forget(job_id, owner)
        if finished["status"] == "succeeded" and finished["result"] is not None:
            return finished["result"]
        if finished["error"] is not None:
            raise JobFailed(finished["error"])
        raise JobFailed(JobCancelled(f"job {job_id} was cancelled").problem())
