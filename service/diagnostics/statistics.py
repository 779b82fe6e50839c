"""Summary statistics of many tensors in a few batched reductions and one host transfer.

On the CPU, the native kernel (`service.diagnostics.reductions`) reads each tensor once, all
in one call. Where it is not available (no compiler, a dtype it lacks), the eager path:
small tensors (biases, norms, the layers of small models) are concatenated on their device,
copied to the host in one piece with the rows of the others, and reduced per segment there
with numpy's `reduceat` (a handful of vectorised calls for any number of tensors). Larger
tensors are reduced on their device in groups of equal size, stacked into one matrix
reduced row by row (one call per group: a deep stack of equal layers costs one call, not
one per layer); the largest, one at a time, without copies. On both paths the NaN/Inf count
is derived from the absolute sum and only counted when that sum is not finite.

On an accelerator `summarise` hands over to `service.diagnostics.tiled`.
"""

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch._utils import _flatten_dense_tensors

from service.diagnostics.columns import MAX, MIN, NUMEL, ZEROS, Stats, accumulation_dtype, finish
from service.diagnostics.tiled import summarise_tiled

# Up to this many elements a tensor is reduced on the host with numpy.
SEGMENT_LIMIT = 1 << 12
# Up to this many elements equal-sized tensors are stacked (copied) to be reduced together:
# below it a call costs more than the copy; above it, the copy more than the call.
STACK_LIMIT = 1 << 16
# Elements of one stack at most, to bound the copy (and `Scratch`'s buffer).
STACK_ELEMENTS = 1 << 22

# tensors -> (n, 8) float64 rows in the layout of `columns`, or None where it cannot
NativeRows = Callable[[Sequence[torch.Tensor]], np.ndarray | None]

CHUNK = 1 << 20
# (l1, l2², sum, min, max, zeros, NaN/Inf, numel) of a tensor without elements
_EMPTY_ROW = np.array([0.0, 0.0, 0.0, np.inf, -np.inf, 0.0, 0.0, 0.0])


def eager_row(t: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """(l1, l2², sum, min, max, zeros) of one tensor with single-pass kernels over 1M-element
    chunks, combined in `acc`: chunks bound the temporaries of |x| and x², and keep float32
    sums accurate (float32 `vector_norm` over millions of elements is off by 1e-4)."""
    flat = t.reshape(-1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    partials = []
    for chunk in flat.split(CHUNK):
        low, high = torch.aminmax(chunk)
        parts = (chunk.abs().sum(), chunk.square().sum(), chunk.sum(), low, high)
        partials.append(torch.stack([*parts, chunk.numel() - torch.count_nonzero(chunk)]))
    rows = torch.stack(partials).to(acc)  # (chunks, 6)
    sums = rows[:, [0, 1, 2, 5]].sum(0)
    return torch.stack([*sums[:3], rows[:, 3].min(), rows[:, 4].max(), sums[3]])


def eager_rows(x: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """Rows of a (k, n) matrix with eager kernels; a single row goes in chunks."""
    if x.shape[0] == 1:
        return with_counts(eager_row(x[0], acc)[None], x.shape[1])
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    low, high = torch.aminmax(x, dim=1)
    parts = [x.abs().sum(1), x.square().sum(1), x.sum(1), low, high, (x == 0).sum(1)]
    return with_counts(torch.stack(parts, dim=1).to(acc), x.shape[1])


def with_counts(partials: torch.Tensor, numel: int) -> torch.Tensor:
    """(k, 6) partials + the NaN/Inf column (-1: derive it) + the numel column."""
    counts = torch.tensor([-1.0, numel], dtype=partials.dtype, device=partials.device)
    return torch.cat([partials, counts.expand(partials.shape[0], 2)], dim=1)


Stack = Callable[[Sequence[torch.Tensor]], torch.Tensor]


def stack_rows(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """(k, n) matrix of k tensors of n elements, in new memory."""
    return torch.stack([t.reshape(-1) for t in tensors])


class Scratch:
    """Stacks into memory reused per thread: new memory costs its page faults on each use
    (stacking 256 tensors of 65,536 floats took 25 ms into new memory, 3.6 ms into reused).
    Holds at most STACK_ELEMENTS elements per thread that stacked; a stack is read before
    the next one is made (`summarise` reduces each as soon as it is stacked)."""

    def __init__(self) -> None:
        self._local = threading.local()

    @torch.no_grad()  # `out=` refuses inputs that require grad (layer outputs do)
    def stack(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        first = tensors[0]
        nbytes = len(tensors) * first.numel() * first.element_size()
        buffer: torch.Tensor | None = getattr(self._local, "buffer", None)
        if buffer is None or buffer.numel() < nbytes or buffer.device != first.device:
            buffer = torch.empty(nbytes, dtype=torch.uint8, device=first.device)
            self._local.buffer = buffer
        out = buffer[:nbytes].view(first.dtype).view(len(tensors), first.numel())
        return torch.stack([t.reshape(-1) for t in tensors], out=out)


def _groups(
    tensors: Sequence[torch.Tensor], indices: list[int], stack: Stack
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(indices, matrix) per group of equal size and dtype: stacked rows, or one view.
    A generator: each stack is made when the previous one has been reduced."""
    by_kind: dict[tuple[int, torch.dtype], list[int]] = {}
    for i in indices:
        by_kind.setdefault((tensors[i].numel(), tensors[i].dtype), []).append(i)
    for (numel, _), members in by_kind.items():
        if len(members) > 1 and numel <= STACK_LIMIT:
            per_stack = max(1, STACK_ELEMENTS // numel)
            for start in range(0, len(members), per_stack):
                chunk = members[start : start + per_stack]
                yield chunk, stack([tensors[i] for i in chunk])
        else:
            yield from (([i], tensors[i].reshape(1, -1)) for i in members)


def _segment_columns(flat: np.ndarray, counts: list[int]) -> np.ndarray:
    """(8, n) columns of n tensors concatenated in `flat`, one segment each."""
    starts = np.zeros(len(counts), dtype=np.intp)
    np.cumsum(counts[:-1], out=starts[1:])
    summed = np.empty((5, len(flat)))  # |x|, x², x, x == 0, not finite
    np.abs(flat, out=summed[0])
    np.multiply(flat, flat, out=summed[1])
    summed[2] = flat
    np.equal(flat, 0, out=summed[3])
    np.logical_not(np.isfinite(flat), out=summed[4])
    sums = np.add.reduceat(summed, starts, axis=1)
    columns = np.empty((8, len(counts)))
    columns[:3] = sums[:3]
    np.minimum.reduceat(flat, starts, out=columns[MIN])
    np.maximum.reduceat(flat, starts, out=columns[MAX])
    columns[ZEROS:NUMEL] = sums[3:]
    columns[NUMEL] = counts
    return columns


@torch.no_grad()
def summarise(
    tensors: Sequence[torch.Tensor],
    native: NativeRows | None = None,
    known: Mapping[int, np.ndarray] | None = None,
    stack: Stack = stack_rows,
) -> list[Stats]:
    """Statistics of every tensor, in order. All tensors must share one device.

    `native` reduces a list of tensors in one call (`Reductions.tensor_rows`), the eager
    kernels below where it cannot; `known` holds rows already computed (as `native` returns
    them), by `id` of their tensor; `stack` makes the eager path's matrices of equal-sized
    tensors (`Scratch.stack` reuses its memory).
    """
    if not tensors:
        return []
    if tensors[0].device.type != "cpu":
        return summarise_tiled(tensors)
    known = known or {}
    computed = [i for i, t in enumerate(tensors) if id(t) not in known] if known else None
    chosen = tensors if computed is None else [tensors[i] for i in computed]
    rows = native(chosen) if native is not None else None
    if rows is None:
        rows = _eager_rows(chosen, stack)
    if computed is not None:
        rows_of_computed, rows = rows, np.empty((len(tensors), 8))
        rows[computed] = rows_of_computed
        for i, t in enumerate(tensors):
            if id(t) in known:
                rows[i] = known[id(t)]
    return finish(tensors, rows)


def _eager_rows(tensors: Sequence[torch.Tensor], stack: Stack) -> np.ndarray:
    """(n, 8) rows in the layout of `columns`, in order: tiny tensors reduced per segment on
    the host; larger ones stacked by size and reduced on their device, one call per stack
    (or per tensor, the largest), then one transfer."""
    acc = accumulation_dtype(tensors[0].device)
    sizes = [t.numel() for t in tensors]
    small = [i for i, size in enumerate(sizes) if 0 < size <= SEGMENT_LIMIT]
    large = [i for i, size in enumerate(sizes) if size > SEGMENT_LIMIT]
    order, parts = [], []
    for members, matrix in _groups(tensors, large, stack):
        order += members
        parts.append(eager_rows(matrix, acc).reshape(-1))
    if small:
        # One C++ call flattens and concatenates them all (what DDP uses for its buckets).
        parts.insert(0, _flatten_dense_tensors([tensors[i] for i in small]).to(acc))
    host = torch.cat(parts).cpu().numpy() if parts else np.empty(0)  # one transfer
    counted = sum(sizes[i] for i in small)
    # Tensors without elements keep this row: there is no segment for `reduceat` (it would
    # return a neighbour's element).
    rows = np.tile(_EMPTY_ROW, (len(tensors), 1))
    if small:
        with np.errstate(all="ignore"):
            rows[small] = _segment_columns(host[:counted], [sizes[i] for i in small]).T
    rows[order] = host[counted:].reshape(len(order), 8)
    return rows
