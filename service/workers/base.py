"""The worker interface: `submit(task) -> result`, with capacity and a deadline."""

from dataclasses import dataclass
from typing import Any, Protocol

from service.diagnostics.models import ModelCache
from service.diagnostics.plan import RunPlan


@dataclass(frozen=True)
class DiagnosticsTask:
    plan: RunPlan


@dataclass(frozen=True)
class CompareTask:
    plans: dict[str, RunPlan]


@dataclass(frozen=True)
class SweepTask:
    runs: list[tuple[dict[str, Any], RunPlan]]  # (axis values, plan)


Task = DiagnosticsTask | CompareTask | SweepTask


class Worker(Protocol):
    """Runs tasks away from the event loop. Implementations: in-process threads."""

    @property
    def capacity(self) -> int:
        """Tasks admitted at once (running + queued); one more gets `Overloaded`."""
        ...

    @property
    def in_flight(self) -> int: ...

    models: ModelCache | None  # the initial models kept for repeated requests, once started

    def ready(self) -> bool:
        """Accepting work and the device answers."""
        ...

    async def submit(self, task: Task, timeout_s: float) -> Any:
        """Run `task`; raises Overloaded when full, Timeout past `timeout_s`."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Refuse new work, let in-flight work finish."""
        ...
