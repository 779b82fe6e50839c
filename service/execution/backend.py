"""The backend interface: the service layer hands it checked jobs; it runs them away from the
event loop and keeps their state, which the service layer reads back."""

from dataclasses import dataclass
from typing import Any, Protocol

from service.execution.jobs import JobSpec
from service.schemas.jobs import Job


@dataclass(frozen=True)
class Idempotency:
    """A client's `Idempotency-Key` and a digest of the body it came with."""

    key: str
    body_sha256: str


@dataclass(frozen=True)
class Load:
    """What admission looks at, in the backend's unit (in-process: jobs; celery: runs):
    what is waiting or running where this job would go, and what this job adds."""

    pending: int
    capacity: int
    cost: int

    @property
    def full(self) -> bool:
        return self.pending > 0 and self.pending + self.cost > self.capacity


RUN_SECONDS_BUCKETS = (0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0, 300.0, float("inf"))


@dataclass(frozen=True)
class BackendMetrics:
    """What /metrics shows of a backend at one scrape."""

    queues: dict[str, int]  # runs waiting, by queue
    jobs: dict[str, int]  # jobs that reached each state
    workers: int
    # (kind, device) -> (cumulative bucket counts by upper bound, sum of seconds)
    run_seconds: dict[tuple[str, str], tuple[list[tuple[str, float]], float]]


def bucket(seconds: float) -> float:
    """The upper bound of RUN_SECONDS_BUCKETS that `seconds` falls under."""
    return next(b for b in RUN_SECONDS_BUCKETS if seconds <= b)


def cumulative(counts: dict[float, int]) -> list[tuple[str, float]]:
    """Prometheus buckets from counts per bucket of RUN_SECONDS_BUCKETS."""
    total, out = 0, []
    for bound in RUN_SECONDS_BUCKETS:
        total += counts.get(bound, 0)
        out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
    return out


class Backend(Protocol):
    """Implementations: `InProcessBackend` (threads of the API process) and `CeleryBackend`
    (Celery workers through Redis)."""

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Refuse new work, let in-flight work finish."""
        ...

    async def ready(self) -> None:
        """Raise NotReady where the backend cannot take work now."""
        ...

    async def load(self, spec: JobSpec) -> Load: ...

    async def wait_s(self, spec: JobSpec, load: Load) -> float:
        """Of a full backend: the expected seconds until `spec` would fit (`Retry-After`)."""
        ...

    async def submit(self, spec: JobSpec, idempotency: Idempotency | None) -> tuple[Job, bool]:
        """Store and start the job; (the job, whether it existed already under the key).
        Raises IdempotencyConflict for a used key with another body."""
        ...

    async def job(self, job_id: str, owner: str) -> Job | None:
        """The job, or None where it does not exist or belongs to another owner."""
        ...

    async def wait(self, job_id: str, owner: str, timeout_s: float) -> Job | None:
        """The job once it has finished, or as it stands after `timeout_s`."""
        ...

    async def forget(self, job_id: str, owner: str) -> None:
        """Drop a finished job whose result was delivered where it was asked for."""
        ...

    async def cancel(self, job_id: str, owner: str) -> Job | None:
        """Ask the job to stop: queued runs never start, a running one stops at its next
        cancellation point. Returns the job as it stands."""
        ...

    async def describe(self) -> dict[str, Any]:
        """What /readyz reports about the backend."""
        ...

    async def metrics(self) -> BackendMetrics: ...
