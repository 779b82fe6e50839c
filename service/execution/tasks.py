"""What a backend does with each task: the domain functions, called on a run thread."""

import threading

from service.diagnostics.compare import compare
from service.diagnostics.model_cache import ModelCache
from service.diagnostics.run import run
from service.diagnostics.sweep import sweep_report
from service.execution.backend import CompareTask, DiagnosticsTask, SweepTask, Task
from service.schemas.reports import CompareReport, DiagnosticsReport
from service.schemas.sweeps import SweepReport


def execute(
    task: Task, cancel: threading.Event, models: ModelCache
) -> DiagnosticsReport | CompareReport | SweepReport:
    if isinstance(task, DiagnosticsTask):
        return run(task.plan, cancel, models)
    if isinstance(task, CompareTask):
        return compare({name: run(plan, cancel, models) for name, plan in task.plans.items()})
    if isinstance(task, SweepTask):
        return sweep_report([(axes, run(plan, cancel, models)) for axes, plan in task.runs])
    raise TypeError(f"unknown task {type(task).__name__}")
