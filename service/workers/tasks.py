"""What a worker does with each task: the domain functions, called on a worker thread."""

import threading
from typing import Any

from service.diagnostics.compare import compare
from service.diagnostics.models import ModelCache
from service.diagnostics.run import run
from service.diagnostics.sweep import sweep_report
from service.workers.base import CompareTask, DiagnosticsTask, SweepTask, Task


def execute(task: Task, cancel: threading.Event, models: ModelCache) -> Any:
    if isinstance(task, DiagnosticsTask):
        return run(task.plan, cancel, models)
    if isinstance(task, CompareTask):
        return compare({name: run(plan, cancel, models) for name, plan in task.plans.items()})
    if isinstance(task, SweepTask):
        return sweep_report([(axes, run(plan, cancel, models)) for axes, plan in task.runs])
    raise TypeError(f"unknown task {type(task).__name__}")
