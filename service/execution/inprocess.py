"""The embedded backend: jobs run on the runtime's run threads inside the API process and are
kept in memory, bounded in bytes and in time."""

import asyncio
import contextlib
import contextvars
import heapq
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from service.config import Settings
from service.errors import Cancelled, GradiagError, IdempotencyConflict, NotReady, Timeout
from service.execution.backend import (
    BackendMetrics,
    Idempotency,
    Load,
    bucket,
    cumulative,
)
from service.execution.jobs import JobSpec, combine, execute_unit, new_job, now
from service.runtime import Runtime
from service.schemas.jobs import TERMINAL, Job

logger = logging.getLogger("gradiag")

PRIOR_FLOPS_PER_S = 1e10  # a core's order of magnitude, until a job has been timed here


def _ended() -> dict[str, Any]:
    return GradiagError("the run ended early").problem()


@dataclass
class _Entry:
    job: Job
    owner: str
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    timed_out: bool = False
    idempotency: Idempotency | None = None
    nbytes: int = 0
    finished_at: float = 0.0
    released: bool = False  # its admission slot is free again
    deadline: asyncio.TimerHandle | None = None
    flops: int = 0  # estimated, of all its runs
    running_since: float | None = None  # time.monotonic() when a run thread took it


class InProcessBackend:
    """`concurrency` run threads; jobs beyond them wait in the executor's queue. The job
    table lives on the event loop; run threads hand their updates to it."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._runtime: Runtime | None = None
        self._accepting = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: dict[str, _Entry] = {}
        self._done: OrderedDict[str, None] = OrderedDict()  # finished jobs, oldest first
        self._keys: dict[tuple[str, str], str] = {}  # (owner, idempotency key) -> job id
        self._in_flight = 0
        self._ahead: dict[str, _Entry] = {}  # jobs in flight, oldest first
        self._finished: deque[tuple[int, float]] = deque(maxlen=32)  # (FLOPs, seconds)
        self._kept_bytes = 0
        self._states: dict[str, int] = {}
        self._running = 0
        self._run_counts: dict[tuple[str, str], dict[float, int]] = {}
        self._run_sums: dict[tuple[str, str], float] = {}

    @property
    def runtime(self) -> Runtime | None:
        return self._runtime

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._runtime = await asyncio.to_thread(Runtime.bootstrap, self._settings)
        self._accepting = True

    async def stop(self) -> None:
        self._accepting = False
        if self._runtime is not None:
            await asyncio.to_thread(self._runtime.close)

    async def ready(self) -> None:
        if not self._accepting or self._runtime is None:
            raise NotReady("the backend is stopping or not started")

    async def load(self, spec: JobSpec) -> Load:
        capacity = self._settings.concurrency + self._settings.queue_capacity
        return Load(self._in_flight, capacity, 1)

    async def wait_s(self, spec: JobSpec, load: Load) -> float:
        """When the jobs in flight that must end for one more to fit are expected to have
        ended: each job takes its FLOPs at the best rate recently measured plus the shortest
        recent job's time, less what a running job has done; queued jobs take the run
        threads in order as they free up."""
        rate = max((f / s for f, s in self._finished if s > 0), default=PRIOR_FLOPS_PER_S)
        overhead = min((s for _, s in self._finished), default=0.0)
        now = time.monotonic()
        expected = {i: overhead + e.flops / rate for i, e in self._ahead.items()}
        since = {i: e.running_since for i, e in self._ahead.items() if e.running_since is not None}
        ends = [max(0.0, expected[i] - (now - started)) for i, started in since.items()]
        free = sorted(ends) + [0.0] * max(0, self._settings.concurrency - len(since))
        heapq.heapify(free)
        for job_id in self._ahead:
            if job_id not in since:
                end = heapq.heappop(free) + expected[job_id]
                ends.append(end)
                heapq.heappush(free, end)
        excess = load.pending + load.cost - load.capacity
        return sorted(ends)[min(excess, len(ends)) - 1] if ends else 0.0

    async def describe(self) -> dict[str, Any]:
        return {"name": "inprocess", "in_flight": self._in_flight, "jobs_kept": len(self._jobs)}

    async def metrics(self) -> BackendMetrics:
        runs = {
            key: (cumulative(counts), self._run_sums[key])
            for key, counts in self._run_counts.items()
        }
        waiting = self._in_flight - self._running
        return BackendMetrics(
            {"inprocess": waiting}, dict(self._states), self._settings.concurrency, runs
        )

    async def submit(self, spec: JobSpec, idempotency: Idempotency | None) -> tuple[Job, bool]:
        await self.ready()
        runtime, loop = self._runtime, self._loop
        assert runtime is not None and loop is not None
        self._expire()
        if idempotency is not None:
            existing = self._keys.get((spec.owner, idempotency.key))
            if existing is not None and existing in self._jobs:
                entry = self._jobs[existing]
                assert entry.idempotency is not None
                if entry.idempotency.body_sha256 != idempotency.body_sha256:
                    raise IdempotencyConflict(
                        "this Idempotency-Key was used with another body",
                        extra={"job": f"/v1/jobs/{existing}"},
                    )
                return entry.job, True
            self._keys[(spec.owner, idempotency.key)] = spec.id
        entry = _Entry(new_job(spec), spec.owner, idempotency=idempotency)
        self._jobs[spec.id] = entry
        self._count("queued")
        self._in_flight += 1
        entry.flops = sum(unit.plan.flops for unit in spec.units)
        self._ahead[spec.id] = entry
        entry.deadline = loop.call_later(self._settings.job_timeout_s, self._time_out, entry)
        # The run thread logs under the request that submitted the job (service.logs).
        context = contextvars.copy_context()
        future = runtime.run_threads.submit(context.run, self._execute, runtime, spec, entry)
        # A job dropped at shut-down never runs `_execute`, which otherwise ends with `_finish`.
        future.add_done_callback(
            lambda f: (
                self._call_soon(self._finish, entry, "failed", None, _ended(), [])
                if f.cancelled()
                else None
            )
        )
        return entry.job, False

    async def forget(self, job_id: str, owner: str) -> None:
        entry = self._jobs.get(job_id)
        if entry is not None and entry.owner == owner and entry.job["status"] in TERMINAL:
            self._drop(job_id, entry)

    async def job(self, job_id: str, owner: str) -> Job | None:
        entry = self._jobs.get(job_id)
        return entry.job if entry is not None and entry.owner == owner else None

    async def wait(self, job_id: str, owner: str, timeout_s: float) -> Job | None:
        entry = self._jobs.get(job_id)
        if entry is None or entry.owner != owner:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await entry.finished.wait()
        return entry.job

    async def cancel(self, job_id: str, owner: str) -> Job | None:
        entry = self._jobs.get(job_id)
        if entry is None or entry.owner != owner:
            return None
        entry.cancel.set()
        if entry.job["status"] == "queued":  # it never starts: its slot is free now
            self._settle(entry, "cancelled", None, None)
            self._release(entry)
        return entry.job

    # On a run thread.

    def _execute(self, runtime: Runtime, spec: JobSpec, entry: _Entry) -> None:
        """Runs the job and hands the outcome to the loop in one call (`_finish`); the start
        is one more, so that a GET sees the job running."""
        runs: list[tuple[str, float]] = []  # (device, seconds) per run, for the metrics
        status, result = "failed", None
        error: dict[str, Any] | None = _ended()
        try:
            if entry.cancel.is_set():  # settled on the loop when it was cancelled or timed out
                return
            self._call_soon(self._start, entry)
            pieces = []
            for unit in spec.units:
                unit_started = time.perf_counter()
                pieces.append(execute_unit(unit, entry.cancel, runtime.models))
                runs.append((unit.plan.device, time.perf_counter() - unit_started))
                entry.job["progress"]["done"] = len(pieces)  # one int: safe from this thread
            result = combine(spec.kind, [u.label for u in spec.units], pieces)
            entry.nbytes = len(orjson.dumps(result))
            status, error = "succeeded", None
        except Cancelled:
            if entry.timed_out:
                error = Timeout.job_deadline(self._settings.job_timeout_s).problem()
            else:
                status, error = "cancelled", None
        except GradiagError as failure:
            error = failure.problem()
        except Exception:
            logger.exception("job %s failed", entry.job["id"])
            error = GradiagError("an unexpected error occurred").problem()
        finally:
            self._call_soon(self._finish, entry, status, result, error, runs)

    def _call_soon(self, callback: Any, *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            self._loop.call_soon_threadsafe(callback, *args)

    # On the event loop.

    def _start(self, entry: _Entry) -> None:
        if entry.job["status"] != "queued":  # cancelled or timed out meanwhile
            return
        entry.job["status"] = "running"
        entry.job["started_at"] = now()
        entry.running_since = time.monotonic()
        self._running += 1
        self._count("running")

    def _finish(
        self,
        entry: _Entry,
        status: Any,
        result: Any,
        error: Any,
        runs: list[tuple[str, float]],
    ) -> None:
        """The job's thread is done with it: its outcome, its slot, its deadline, its runs'
        times."""
        self._settle(entry, status, result, error)
        self._release(entry)
        if entry.deadline is not None:
            entry.deadline.cancel()
        if status == "succeeded":  # a job that ended early says nothing of the rate
            self._finished.append((entry.flops, sum(seconds for _, seconds in runs)))
        for device, seconds in runs:
            key = (entry.job["kind"], device)
            bound = bucket(seconds)
            counts = self._run_counts.setdefault(key, {})
            counts[bound] = counts.get(bound, 0) + 1
            self._run_sums[key] = self._run_sums.get(key, 0.0) + seconds

    def _count(self, state: str) -> None:
        self._states[state] = self._states.get(state, 0) + 1

    def _settle(self, entry: _Entry, status: Any, result: Any, error: Any) -> None:
        job = entry.job
        if job["status"] in TERMINAL:  # a finished job never changes again
            return
        if job["status"] == "running":
            self._running -= 1
        self._count(status)
        job["status"], job["result"], job["error"] = status, result, error
        job["finished_at"] = now()
        entry.finished_at = time.monotonic()
        entry.finished.set()
        if job["id"] in self._jobs:
            self._done[job["id"]] = None
            self._kept_bytes += entry.nbytes

    def _release(self, entry: _Entry) -> None:
        """The job's thread is done with it (or it never got one): its slot is free."""
        if entry.released:
            return
        entry.released = True
        self._in_flight -= 1
        self._ahead.pop(entry.job["id"], None)
        self._expire()

    def _time_out(self, entry: _Entry) -> None:
        if entry.job["status"] == "queued":
            late = Timeout.job_deadline(self._settings.job_timeout_s)
            self._settle(entry, "failed", None, late.problem())
            entry.cancel.set()
            self._release(entry)
        elif entry.job["status"] not in TERMINAL:
            entry.timed_out = True
            entry.cancel.set()

    def _expire(self) -> None:
        """Drop finished jobs past their time to live, then the oldest past the byte budget:
        from the front of the finish order, so each call costs what it drops."""
        horizon = time.monotonic() - self._settings.job_ttl_s
        while self._done:
            oldest = self._jobs[next(iter(self._done))]
            over = self._kept_bytes > self._settings.job_store_bytes
            if not over and oldest.finished_at >= horizon:
                return
            self._drop(oldest.job["id"], oldest)

    def _drop(self, job_id: str, entry: _Entry) -> None:
        del self._jobs[job_id]
        if self._done.pop(job_id, 0) is None:  # it was counted in the kept bytes
            self._kept_bytes -= entry.nbytes
        if entry.idempotency is not None:
            self._keys.pop((entry.owner, entry.idempotency.key), None)
