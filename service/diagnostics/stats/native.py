"""The native CPU kernel: every tensor of a run read once, in one call, without copies.

Each statistic is a memory-bound reduction; eager torch reads a tensor once per statistic,
and one call per tensor costs more than the reduction for the small tensors of a deep model.
`kernel.c` is built into `_kernel` at install time; it runs on torch's OpenMP threads and
releases the GIL. Where it was not built, `load()` says why and the reference path answers.
"""

import importlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from service.diagnostics.stats.reference import reference_rows
from service.diagnostics.stats.rows import COLUMNS, Rows

EXTENSION = "service.diagnostics.stats._kernel"
# Exact conversions to float32 where the kernel has no loop of its own.
_WIDENED = (torch.float16, torch.bfloat16)
_NATIVE = (torch.float32, torch.float64)


class NativeKernel:
    """The loaded `_kernel` extension. The run thread calls it in parallel on torch's
    intra-op thread count; side threads call it serially (see `service.runtime`)."""

    def __init__(self, rows_function: object, serial_only: bool):
        self._rows = rows_function
        self.serial_only = serial_only  # another OpenMP runtime is loaded: stay off libgomp

    def rows(self, tensors: Sequence[torch.Tensor], parallel: bool = True) -> Rows | None:
        """(n, 8) rows of floating tensors on the CPU (min and max NaN where a tensor holds
        NaN, as torch.amin; the NaN/Inf count -1, to derive); None where the kernel cannot
        read one of them (another device or dtype). `parallel=False` stays on this thread."""
        if not tensors:
            return np.empty((0, COLUMNS))
        threads = torch.get_num_threads() if parallel and not self.serial_only else 1
        prepared = []
        for t in tensors:
            if not t.is_cpu:
                return None
            if t.dtype not in _NATIVE:
                if t.dtype not in _WIDENED:
                    return None
                t = t.float()
            # The kernel reads memory as it is: a negated view must be resolved first.
            plain = t.is_contiguous() and not t.is_neg()
            prepared.append(t if plain else t.resolve_neg().contiguous())
        rows = np.empty((len(prepared), COLUMNS))
        for dtype in {t.dtype for t in prepared}:
            chosen = [i for i, t in enumerate(prepared) if t.dtype == dtype]
            part = rows if len(chosen) == len(prepared) else np.empty((len(chosen), COLUMNS))
            self._call(dtype == torch.float64, [prepared[i] for i in chosen], part, threads)
            if part is not rows:
                rows[chosen] = part
        return rows

    def side_row(self, tensor: torch.Tensor) -> np.ndarray | None:
        """The row of one tensor on the calling thread, serially; None where a torch op would
        be needed first (a cast or a copy: torch ops are parallel, see `service.runtime`)."""
        if tensor.dtype not in _NATIVE or not tensor.is_contiguous() or tensor.is_neg():
            return None
        rows = self.rows([tensor], parallel=False)
        return None if rows is None else rows[0]

    def _call(self, double: bool, tensors: list[torch.Tensor], out: Rows, threads: int) -> None:
        addresses = np.fromiter((t.data_ptr() for t in tensors), np.int64, len(tensors))
        numels = np.fromiter((t.numel() for t in tensors), np.int64, len(tensors))
        # `tensors` holds every tensor alive (and contiguous) for the duration of the call.
        self._rows(double, addresses, numels, out, threads)  # type: ignore[operator]


def load() -> tuple[NativeKernel | None, str]:
    """The kernel, checked against the reference on a sample, or None and the reason. Runs
    parallel torch ops and the parallel kernel: call it on a thread that ends afterwards."""
    try:
        extension = importlib.import_module(EXTENSION)
    except ImportError as exc:
        return None, f"not built ({exc})"
    runtimes = openmp_runtimes()
    kernel = NativeKernel(extension.rows, serial_only=len(runtimes) > 1)
    # A well-conditioned sample over several pieces, and a tensor with no elements.
    sample = torch.linspace(-0.5, 2.0, 100_003)
    sample[::7] = 0
    for dtype in _NATIVE:
        inputs = [sample.to(dtype), sample[:0].to(dtype)]
        got, want = kernel.rows(inputs), reference_rows(inputs)
        # The reference counts NaN/Inf; the kernel leaves them to derive (-1).
        if got is None or not np.allclose(got[:, :6], want[:, :6], rtol=1e-9):
            return None, f"disagrees with the reference on {dtype}"
    if kernel.serial_only:
        return kernel, f"serial: several OpenMP runtimes are loaded: {sorted(runtimes)}"
    return kernel, "ready"


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
