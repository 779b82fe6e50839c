"""Process memory: malloc arenas (glibc), one for the whole process by default; and the
start-up objects frozen out of the garbage collector's view.

glibc gives each thread that allocates its own arena. Runs happen on worker threads, and
there they were slower than the same code on the main thread: a gpt2-small cold run took
1.47-1.93 s on a pool thread against 1.30-1.38 s on the main thread, and 1.30-1.37 s on a
pool thread with one arena (this project's 2-core machine). The likely cause is that a thread
arena gives freed memory back sooner than the main one, so that each run faults its
activations in again; the measurement, not the cause, is what this setting rests on.

Python's full collections traverse every tracked object, and a server that has imported
torch, FastAPI and pydantic holds about 320,000 of them, nearly all alive for good. Under a
mixed load (the lesson and MLPs of depth 8-256, 40 s) a full collection paused the process
152-204 ms, every request in flight with it; with the objects of start-up frozen, 3-7 ms.
"""

import ctypes
import functools
import gc
import logging

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
