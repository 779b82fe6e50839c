"""One pass over each tensor, no copies: a native kernel for the statistics on the CPU.

Each statistic is a memory-bound reduction; eager PyTorch reads a tensor once per statistic,
and one call per tensor costs more than the reduction for the small tensors of a deep
model. `rows.c` reads every tensor of a run once, in one call, on torch's OpenMP threads.
It is compiled at start-up with gcc (0.2 s here, once per process, off the event loop) and
loaded with ctypes; where there is no gcc, or it fails, or it disagrees with the eager
kernels on a check sample, the eager path of `summarise` answers, with equal results up to
float rounding.
"""

import ctypes
import functools
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from service.diagnostics.columns import Stats
from service.diagnostics.statistics import Scratch, eager_rows, summarise

logger = logging.getLogger("gradiag")

SOURCE = Path(__file__).with_name("rows.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
# (count, addresses, numels, out, threads) -> 0, or -1 out of memory; see rows.c
Kernel = Callable[[int, int, int, int, int], int]
# Exact conversions to float32 where the kernel has no loop of their own.
_WIDENED = (torch.float16, torch.bfloat16)


# Once per process: a loaded library stays mapped until the process ends (ctypes never
# unloads one), so every app of the process shares it.
@functools.cache
def _compile() -> ctypes.CDLL:
    compiler = shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no gcc on PATH")
    with tempfile.TemporaryDirectory(prefix="gradiag-") as folder:
        library = Path(folder) / "rows.so"
        subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", str(library)],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        # Loaded, the library stays mapped after its file is removed with the folder.
        native = ctypes.CDLL(str(library))
    for name in ("gradiag_rows_f32", "gradiag_rows_f64"):
        function = getattr(native, name)
        function.argtypes = [ctypes.c_int64, *[ctypes.c_void_p] * 3, ctypes.c_int]
        function.restype = ctypes.c_int
    return native


class Reductions:
    """The statistics kernel of one process: native when compiled, eager otherwise.

    The run thread calls the kernel in parallel, on its own OpenMP team (torch's). Side
    threads call it serially: a thread that enters an OpenMP parallel region gets a team of
    its own for as long as it lives, and with a second team alive every parallel op of the
    run thread slowed down (a benchmark of stacking copies: 2.0 ms, 6.0 ms with a side thread
    that had run a parallel kernel; 2 cores). So side threads never run eager kernels either.
    """

    def __init__(self, fused: bool):
        self.state = "warming" if fused else "off"  # warming | ready | unavailable | off
        self._functions: dict[torch.dtype, Kernel] = {}
        self._serial_only = False
        self.stack = Scratch().stack  # matrices of equal-sized tensors for the eager path

    def warm_up(self) -> None:
        """Compile, load and check the kernel; blocking. The check runs parallel torch ops and
        the parallel kernel: call it on a thread that ends afterwards (see the class)."""
        if self.state != "warming":
            return
        try:
            native = _compile()
            functions = {
                torch.float32: native.gradiag_rows_f32,
                torch.float64: native.gradiag_rows_f64,
            }
            # A well-conditioned sample over several pieces, and a tensor with no elements.
            sample = torch.linspace(-0.5, 2.0, 100_003)
            sample[::7] = 0
            for dtype, function in functions.items():
                got = _call(function, [sample.to(dtype), sample[:0].to(dtype)], threads=2)
                want = eager_rows(sample.double().reshape(1, -1), torch.float64)[0].numpy()
                if not np.allclose(got[0], want, rtol=1e-6) or got[1, :3].any():
                    raise RuntimeError(f"the native kernel disagrees with the eager one ({dtype})")
        except Exception as exc:  # no gcc, or a compiler or library that fails: stay eager
            detail = getattr(exc, "stderr", None)  # gcc's own message, where it failed
            logger.warning("native statistics unavailable, using eager kernels: %s %s", exc,
                           detail.decode(errors="replace").strip() if detail else "")  # fmt: skip
            self.state = "unavailable"
            return
        runtimes = openmp_runtimes()
        if len(runtimes) > 1:  # the kernel's OpenMP calls would start teams besides torch's
            logger.warning("several OpenMP runtimes loaded, statistics kernel serial: %s", runtimes)
            self._serial_only = True
        self._functions = functions
        self.state = "ready"

    def tensor_rows(
        self, tensors: Sequence[torch.Tensor], parallel: bool = True
    ) -> np.ndarray | None:
        """(n, 8) float64 rows (l1, l2², sum, min, max, zeros, -1, numel) of floating tensors
        on the CPU (see `columns`), min and max NaN where a tensor holds NaN (as torch.amin),
        the NaN/Inf count left to derive (-1); None where the kernel cannot answer (not
        ready, another device or dtype). In parallel on torch's intra-op thread count;
        `parallel=False` stays on the calling thread.
        """
        if not self._functions:
            return None
        if not tensors:
            return np.empty((0, 8))
        threads = torch.get_num_threads() if parallel and not self._serial_only else 1
        prepared, dtypes = [], set()
        for t in tensors:
            if not t.is_cpu:  # a pointer the kernel cannot read
                return None
            if t.dtype not in self._functions:
                if t.dtype not in _WIDENED:
                    return None
                t = t.float()
            dtypes.add(t.dtype)
            # The kernel reads memory as it is: a negated view must be resolved first.
            plain = t.is_contiguous() and not t.is_neg()
            prepared.append(t if plain else t.resolve_neg().contiguous())
        if len(dtypes) == 1:
            rows = _call(self._functions[dtypes.pop()], prepared, threads)
        else:
            rows = np.empty((len(prepared), 8))
            for dtype in dtypes:
                chosen = [i for i, t in enumerate(prepared) if t.dtype == dtype]
                rows[chosen] = _call(self._functions[dtype], [prepared[i] for i in chosen], threads)
        return rows

    def summarise(
        self, tensors: Sequence[torch.Tensor], known: Mapping[int, np.ndarray] | None = None
    ) -> list[Stats]:
        """`statistics.summarise` on this kernel, the eager path where it cannot answer."""
        return summarise(tensors, self.tensor_rows, known, self.stack)

    def side_rows(self, tensor: torch.Tensor) -> np.ndarray | None:
        """`tensor_rows` of one tensor on the calling thread, for a side thread; None where
        a torch op would be needed first (a cast or a copy: torch ops are parallel) or only
        the eager kernels could answer: the run thread then does."""
        if tensor.dtype not in self._functions or not tensor.is_contiguous() or tensor.is_neg():
            return None
        rows = self.tensor_rows([tensor], parallel=False)
        return None if rows is None else rows[0]


def openmp_runtimes() -> set[str]:
    """Paths of the OpenMP runtimes mapped into this process (Linux; empty elsewhere). The
    kernel links libgomp.so.1, which resolves to torch's own where torch ships that name."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return set()
    return {
        line.split()[-1]
        for line in maps.read_text().splitlines()
        if any(name in line for name in ("libgomp", "libomp", "libiomp"))
    }


def _call(function: Kernel, tensors: list[torch.Tensor], threads: int) -> np.ndarray:
    count = len(tensors)
    addresses = np.fromiter((t.data_ptr() for t in tensors), dtype=np.int64, count=count)
    numels = np.fromiter((t.numel() for t in tensors), dtype=np.int64, count=count)
    rows = np.empty((count, 8))
    # `tensors` holds every tensor alive (and contiguous) for the duration of the call.
    if function(count, addresses.ctypes.data, numels.ctypes.data, rows.ctypes.data, threads):
        raise MemoryError("the statistics kernel could not allocate its partial rows")
    return rows
