"""The backend interface: the service layer hands it checked tasks; it runs them away from
the event loop, within a capacity and a deadline."""

from dataclasses import dataclass
from typing import Any, Protocol

from service.diagnostics.plan import RunPlan
from service.runtime import Runtime


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


class Backend(Protocol):
    """Runs tasks away from the event loop. Implementation: `InProcessBackend`."""

    @property
    def capacity(self) -> int:
        """Tasks admitted at once (running + queued); one more gets `Overloaded`."""
        ...

    @property
    def in_flight(self) -> int: ...

    @property
    def runtime(self) -> Runtime | None:
        """The process's runtime (model cache, statistics), once started."""
        ...

    def ready(self) -> bool:
        """Accepting work."""
        ...

    async def submit(self, task: Task, timeout_s: float) -> Any:
        """Run `task`; raises Overloaded when full, Timeout past `timeout_s`."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Refuse new work, let in-flight work finish."""
        ...
