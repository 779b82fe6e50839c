"""Process-wide rules, in one place: threads, OpenMP, malloc arenas, the garbage collector.

`Runtime.bootstrap(settings)` sets up everything a process that runs models needs: torch's
configuration, the statistics kernel, the run threads, the side thread and the model cache.
The rules it owns (docs/design.md has the measurements behind each):

- Only run threads enter OpenMP. A thread that enters an OpenMP parallel region (a parallel
  torch op, the parallel kernel) gets a team of its own for as long as it lives, and with a
  second team alive every parallel op of the run threads slows down. So the kernel is
  loaded and checked on a thread that then ends, and the side thread, which hashes and
  summarises weights while the next ones are drawn, only does work that enters no parallel
  region: hashing bytes and the kernel's serial calls (`side_row`).
- One glibc malloc arena for the process by default: runs on pool threads were slower with
  a thread arena of their own.
- Objects alive after start-up are frozen out of the garbage collector's view, once per
  process: full collections of them paused every request in flight.
"""

import ctypes
import functools
import gc
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from service.config import Settings
from service.diagnostics.model_cache import ModelCache
from service.diagnostics.stats import Statistics
from service.diagnostics.stats.native import NativeKernel, load

logger = logging.getLogger("gradiag")

M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(arenas: int) -> bool:
    """Ask glibc to create at most `arenas` arenas (0: leave its default). Threads created
    afterwards share them. False where there is no glibc or it refuses."""
    if arenas == 0:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        logger.info("malloc arenas left as they are: no glibc mallopt")
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))


# Once per process: the collector is the process's, and an app of a process that runs
# several (tests) must not thaw what another froze, nor freeze another's requests' objects.
@functools.cache
def freeze_startup_objects() -> int:
    """Collect, then move every object tracked now to the permanent generation, which
    collections skip, for good; returns how many are frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info("froze %d start-up objects out of the garbage collector's view", frozen)
    return frozen


def load_statistics(enabled: bool) -> Statistics:
    """The statistics of this process, the native kernel loaded and checked on a thread that
    ends (its parallel ops start an OpenMP team that ends with it)."""
    if not enabled:
        return Statistics(None, "off")
    loaded: list[tuple[NativeKernel | None, str]] = []
    thread = threading.Thread(target=lambda: loaded.append(load()), name="gradiag-kernel-check")
    thread.start()
    thread.join()
    kernel, state = loaded[0] if loaded else (None, "the check failed")
    if state != "ready":
        logger.warning("native statistics kernel: %s", state)
    return Statistics(kernel, state)


def configure_torch(settings: Settings, run_threads: int) -> None:
    """Deterministic algorithms as configured, and the intra-op threads of each run thread
    (0: the cores divided among the run threads)."""
    if settings.deterministic:
        # cuBLAS needs a fixed workspace for deterministic results; harmless on the CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(settings.deterministic)
    threads = settings.torch_threads or max(1, len(os.sched_getaffinity(0)) // run_threads)
    torch.set_num_threads(threads)


@dataclass
class Runtime:
    """What one process runs models with. Created once by `bootstrap`, closed by `close`."""

    run_threads: ThreadPoolExecutor
    side_thread: ThreadPoolExecutor  # FIFO: hashing and serial kernel calls only (see above)
    statistics: Statistics
    models: ModelCache

    @classmethod
    def bootstrap(cls, settings: Settings) -> "Runtime":
        """Blocking (the kernel check): call it off the event loop."""
        limit_malloc_arenas(settings.malloc_arenas)  # before the threads below exist
        configure_torch(settings, settings.concurrency)
        statistics = load_statistics(settings.native_statistics)
        side = ThreadPoolExecutor(1, thread_name_prefix="gradiag-side")
        runtime = cls(
            run_threads=ThreadPoolExecutor(settings.concurrency, thread_name_prefix="gradiag-run"),
            side_thread=side,
            statistics=statistics,
            models=ModelCache(
                settings.model_cache_bytes, settings.model_cache_entries, statistics, side
            ),
        )
        if settings.gc_freeze:  # what start-up made lives as long as the process
            freeze_startup_objects()
        return runtime

    def close(self) -> None:
        """Let the runs in flight finish, drop those not started, stop the threads;
        blocking."""
        self.run_threads.shutdown(wait=True, cancel_futures=True)
        self.side_thread.shutdown(wait=True, cancel_futures=True)
