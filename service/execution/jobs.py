"""A job as every backend executes it: runs (one per compare variant or sweep point), each
crossing a backend boundary as plain JSON and planned again where it runs, and how their
results combine into the report the synchronous route answers."""

import datetime
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from service.config import Limits
from service.diagnostics.compare import compare
from service.diagnostics.model_cache import ModelCache
from service.diagnostics.plan import RunPlan, plan_run
from service.diagnostics.run import run
from service.diagnostics.sweep import summarise_run, sweep_report
from service.diagnostics.tensors import LiteralChecks
from service.schemas.jobs import Job, JobKind
from service.schemas.reports import CompareReport, DiagnosticsReport
from service.schemas.requests import DiagnosticsRequest
from service.schemas.sweeps import SweepReport, SweepRun

Piece = DiagnosticsReport | SweepRun  # what one run contributes to its job's result
Result = DiagnosticsReport | CompareReport | SweepReport

SHARED = "$shared"  # in a message, `{"$shared": key}` stands for a tensor its job's runs share
TENSOR_FIELDS = ("input", "target")


@dataclass(frozen=True)
class RunUnit:
    """One run of a job: its position, its label (variant name or sweep axes), its plan."""

    index: int
    label: dict[str, Any]
    plan: RunPlan

    def message(self, shared_keys: dict[int, str] | None = None) -> dict[str, Any]:
        """The run as plain JSON: the request, and the device and dtype it was planned for.
        A nested-list tensor in `shared_keys` (by identity) is sent as a reference to its key."""
        request = self.plan.request
        refs = {
            name: shared_keys[id(payload)]
            for name in TENSOR_FIELDS
            if shared_keys and id(payload := getattr(request, name)) in shared_keys
        }
        document = request.model_dump(mode="json", exclude=set(refs))
        document.update({name: {SHARED: key} for name, key in refs.items()})
        return {
            "index": self.index,
            "label": self.label,
            "request": document,
            "device": self.plan.device,
            "dtype": self.plan.dtype,
        }

    @classmethod
    def from_message(
        cls,
        message: dict[str, Any],
        limits: Limits,
        resolve: Callable[[str], Any] = lambda key: None,
        literals: LiteralChecks | None = None,
    ) -> "RunUnit":
        """Plan a run again where it executes (pure and cheap; the same checks as the API's).
        `resolve` gives the shared tensor a reference stands for; runs of one job given the
        same `literals` check and convert a shared tensor once."""
        document = dict(message["request"])
        for name in TENSOR_FIELDS:
            value = document.get(name)
            if isinstance(value, dict) and SHARED in value:
                document[name] = resolve(value[SHARED])
        request = DiagnosticsRequest.model_validate(document)
        plan = plan_run(
            request,
            default_device=message["device"],
            allowed_devices={message["device"]},
            default_dtype=message["dtype"],
            limits=limits,
            literals=literals,
        )
        return cls(message["index"], message["label"], plan)


def shared_tensors(units: list[RunUnit]) -> tuple[dict[int, str], dict[str, bytes]]:
    """The nested-list tensors that several runs share (by identity): a key for each, and
    each as JSON, to be sent once rather than in every run's message."""
    payloads = {
        id(p): p
        for unit in units
        for name in TENSOR_FIELDS
        if isinstance(p := getattr(unit.plan.request, name), list)
    }
    uses = Counter(id(getattr(unit.plan.request, name)) for unit in units for name in TENSOR_FIELDS)
    keys = {ident: str(n) for n, ident in enumerate(i for i in payloads if uses[i] > 1)}
    return keys, {key: orjson.dumps(payloads[ident]) for ident, key in keys.items()}


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
    if "point" in unit.label:
        return summarise_run(unit.label, report)
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
