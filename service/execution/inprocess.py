"""The embedded backend: the runtime's run threads, inside the API process."""

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any

from service.config import Settings
from service.errors import NotReady, Overloaded, Timeout
from service.execution.backend import Task
from service.execution.tasks import execute
from service.runtime import Runtime


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Any, *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
        loop.call_soon_threadsafe(callback, *args)


class InProcessBackend:
    """`concurrency` run threads run tasks; up to `queue_capacity` more wait; the rest get 429.

    Admission is counted on the event loop (single-threaded, so no lock); a slot is freed
    when its thread really finishes, so a timed-out run holds its slot until it has stopped
    at its next cancellation check.
    """

    def __init__(self, settings: Settings):
        self._settings = settings
        self.concurrency = settings.concurrency
        self._limit = settings.concurrency + settings.queue_capacity
        self._runtime: Runtime | None = None
        self._accepting = False
        self._in_flight = 0
        self._durations: deque[float] = deque(maxlen=32)

    @property
    def capacity(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def runtime(self) -> Runtime | None:
        return self._runtime

    async def start(self) -> None:
        self._runtime = await asyncio.to_thread(Runtime.bootstrap, self._settings)
        self._accepting = True

    async def stop(self) -> None:
        self._accepting = False
        if self._runtime is not None:
            await asyncio.to_thread(self._runtime.close)

    def ready(self) -> bool:
        return self._accepting

    def _retry_after(self) -> int:
        typical = sorted(self._durations)[len(self._durations) // 2] if self._durations else 1.0
        return max(1, math.ceil(typical * self._in_flight / self.concurrency))

    def _timed(self, runtime: Runtime, task: Task, cancel: threading.Event) -> Any:
        started = time.perf_counter()
        try:
            return execute(task, cancel, runtime.models)
        finally:
            self._durations.append(time.perf_counter() - started)

    def _release(self, _: Future[Any]) -> None:
        self._in_flight -= 1

    async def submit(self, task: Task, timeout_s: float) -> Any:
        runtime = self._runtime
        if not self._accepting or runtime is None:
            raise NotReady("the backend is stopping or not started")
        if self._in_flight >= self._limit:
            raise Overloaded(
                f"{self._in_flight} runs in flight, capacity {self._limit}",
                headers={"Retry-After": str(self._retry_after())},
            )
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        self._in_flight += 1
        future = runtime.run_threads.submit(self._timed, runtime, task, cancel)
        future.add_done_callback(lambda f: _call_soon(loop, self._release, f))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            cancel.set()
            raise Timeout(f"the run exceeded its deadline of {timeout_s:g} s") from None
        except asyncio.CancelledError:
            cancel.set()  # the client went away: stop the run at its next layer
            raise
