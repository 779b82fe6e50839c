"""Malloc arenas (glibc): one for the whole process by default.

glibc gives each thread that allocates its own arena and trims a thread arena's heap as soon
as its top is free, so a worker thread that allocates and frees a model's activations on
every run takes the page faults again on the next one. Measured with gpt2-small on this
project's 2-core machine: a cold run took 1.47-1.93 s on a pool thread against 1.30-1.38 s
on the main thread; with one arena, 1.33-1.39 s on either.
"""

import ctypes
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
