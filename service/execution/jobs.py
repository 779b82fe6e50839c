"""A job as every backend executes it: runs (one per compare variant or sweep point), each
crossing a backend boundary as plain JSON and planned again where it runs, and how their
results combine into the report the synchronous route answers."""

import datetime
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from service.config import Limits
from service.diagnostics.compare import compare
from service.diagnostics.model_cache import ModelCache
from service.diagnostics.plan import RunPlan, plan_run
from service.diagnostics.run import run
from service.diagnostics.sweep import summarise_run, sweep_report
from service.schemas.jobs import Job, JobKind
from service.schemas.reports import CompareReport, DiagnosticsReport
from service.schemas.requests import DiagnosticsRequest
from service.schemas.sweeps import SweepReport, SweepRun

Piece = DiagnosticsReport | SweepRun  # what one run contributes to its job's result
Result = DiagnosticsReport | CompareReport | SweepReport


@dataclass(frozen=True)
class RunUnit:
    """One run of a job: its position, its label (variant name or sweep axes), its plan."""

    index: int
    label: dict[str, Any]
    plan: RunPlan

    def message(self) -> dict[str, Any]:
        """The run as plain JSON: the request, and the device and dtype it was planned for."""
        return {
            "index": self.index,
            "label": self.label,
            "request": self.plan.request.model_dump(mode="json"),
            "device": self.plan.device,
            "dtype": self.plan.dtype,
        }

    @classmethod
    def from_message(cls, message: dict[str, Any], limits: Limits) -> "RunUnit":
        """Plan a run again where it executes (pure and cheap; the same checks as the API's)."""
        request = DiagnosticsRequest.model_validate(message["request"])
        plan = plan_run(
            request,
            default_device=message["device"],
            allowed_devices={message["device"]},
            default_dtype=message["dtype"],
            limits=limits,
        )
        return cls(message["index"], message["label"], plan)


@dataclass(frozen=True)
class JobSpec:
    """A checked job, ready to run."""

    kind: JobKind
    units: list[RunUnit]
    owner: str = ""  # the API key's fingerprint; "" where the service is open
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


def execute_unit(unit: RunUnit, cancel: threading.Event, models: ModelCache) -> Piece:
    """Run one unit; a sweep point is summarised where it ran."""
    report = run(unit.plan, cancel, models)
    if "axes" in unit.label:
        return summarise_run(unit.label["axes"], report)
    return report


def combine(kind: JobKind, labels: list[dict[str, Any]], pieces: list[Any]) -> Result:
    """The job's result from its runs' pieces, in order."""
    if kind == "diagnostics":
        report: DiagnosticsReport = pieces[0]
        return report
    if kind == "compare":
        return compare({label["name"]: piece for label, piece in zip(labels, pieces, strict=True)})
    return sweep_report(pieces)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def new_job(spec: JobSpec) -> Job:
    return {
        "id": spec.id,
        "kind": spec.kind,
        "status": "queued",
        "progress": {"done": 0, "total": len(spec.units)},
        "created_at": now(),
        "started_at": None,
        "finished_at": None,
        "result": None,
        "error": None,
    }
