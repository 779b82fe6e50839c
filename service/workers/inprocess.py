"""The embedded backend: a bounded pool of worker threads inside the API process."""

import asyncio
import contextlib
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from service.diagnostics.models import ModelCache
from service.diagnostics.reductions import Reductions
from service.errors import NotReady, Overloaded, Timeout
from service.workers.base import Task
from service.workers.tasks import execute


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Any, *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
        loop.call_soon_threadsafe(callback, *args)


class InProcessWorker:
    """`concurrency` threads run tasks; up to `queue_capacity` more wait; the rest get 429.

    Admission is counted on the event loop (single-threaded, so no lock); a slot is freed
    when its thread really finishes, so a timed-out run holds its slot until it has stopped
    at its next cancellation check.
    """

    def __init__(
        self,
        *,
        concurrency: int,
        queue_capacity: int,
        torch_threads: int,
        cache_bytes: int = 0,
        fused_statistics: bool = False,
    ):
        self.concurrency = concurrency
        self._limit = concurrency + queue_capacity
        self._cache_bytes = cache_bytes
        self._torch_threads = torch_threads or max(1, len(os.sched_getaffinity(0)) // concurrency)
        self._executor: ThreadPoolExecutor | None = None
        self._in_flight = 0
        self._durations: deque[float] = deque(maxlen=32)
        self._fused_statistics = fused_statistics
        self._side: ThreadPoolExecutor | None = None
        self.models: ModelCache | None = None

    @property
    def capacity(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def start(self) -> None:
        torch.set_num_threads(self._torch_threads)
        reductions = Reductions(fused=self._fused_statistics)
        # Before the first request (a fraction of a second), so that every run of the process
        # goes through the same statistics kernel. On a thread of its own that then ends: the
        # OpenMP team its parallel ops start ends with it, where on a pooled thread it would
        # slow every run (the depth-32 MLP's backward: 6-9 ms, 11-18 ms with such a team).
        warm_up = threading.Thread(target=reductions.warm_up, name="gradiag-warm-up")
        warm_up.start()
        await asyncio.to_thread(warm_up.join)
        # A FIFO side thread for work that overlaps a run's sequential parts (hashing the
        # weights already drawn while the next ones are).
        self._side = ThreadPoolExecutor(1, thread_name_prefix="gradiag-side")
        self.models = ModelCache(self._cache_bytes, reductions, self._side)
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="gradiag-run")

    async def stop(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)
        if self._side is not None:
            await asyncio.to_thread(self._side.shutdown, wait=True, cancel_futures=True)

    def ready(self) -> bool:
        return self._executor is not None

    def _retry_after(self) -> int:
        typical = sorted(self._durations)[len(self._durations) // 2] if self._durations else 1.0
        return max(1, math.ceil(typical * self._in_flight / self.concurrency))

    def _timed(self, task: Task, cancel: threading.Event) -> Any:
        started = time.perf_counter()
        try:
            assert self.models is not None
            return execute(task, cancel, self.models)
        finally:
            self._durations.append(time.perf_counter() - started)

    def _release(self, _: Future[Any]) -> None:
        self._in_flight -= 1

    async def submit(self, task: Task, timeout_s: float) -> Any:
        if self._executor is None:
            raise NotReady("the worker is stopping or not started")
        if self._in_flight >= self._limit:
            raise Overloaded(
                f"{self._in_flight} runs in flight, capacity {self._limit}",
                headers={"Retry-After": str(self._retry_after())},
            )
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        self._in_flight += 1
        future = self._executor.submit(self._timed, task, cancel)
        future.add_done_callback(lambda f: _call_soon(loop, self._release, f))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            cancel.set()
            raise Timeout(f"the run exceeded its deadline of {timeout_s:g} s") from None
        except asyncio.CancelledError:
            cancel.set()  # the client went away: stop the run at its next layer
            raise
