"""Summary statistics of many tensors in a few batched reductions and one host transfer.

Small tensors (biases, norms, the layers of small models) are concatenated on their device,
copied to the host in one piece with the rows of the others, and reduced per segment there
with numpy's `reduceat` (a handful of vectorised calls for any number of tensors). Larger
tensors are reduced on their device in groups of equal size, stacked into one matrix
reduced row by row (one call per group: a deep stack of equal layers costs one call, not
one per layer); the largest, one at a time, without copies. Their NaN/Inf count is derived
from the absolute sum and only counted when that sum is not finite.

On an accelerator the cost is the number of kernel launches, not the bytes (a few
microseconds each, against 0.15 ms to read a 124M-parameter model's gradients on an H200):
there every tensor is copied into the rows of one padded matrix, reduced row by row in a
dozen launches whatever the number of tensors, and the rows are combined on the host.
"""

import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch._utils import _flatten_dense_tensors

# Up to this many elements a tensor is reduced on the host with numpy.
SEGMENT_LIMIT = 1 << 12
# Up to this many elements equal-sized tensors are stacked (copied) to be reduced together:
# below it a call costs more than the copy; above it, the copy more than the call.
STACK_LIMIT = 1 << 16
# Elements of one stack at most, to bound the copy (and `Scratch`'s buffer).
STACK_ELEMENTS = 1 << 22

# Columns of a large tensor's row; NaN/Inf = -1 means "derive it from l1".
_L1, _L2SQ, _SUM, _MIN, _MAX, _ZEROS, _NONFINITE, _NUMEL = range(8)
# (k, n) matrix, accumulation dtype -> (k, 8) rows
LargeRows = Callable[[torch.Tensor, torch.dtype], torch.Tensor]

Stats = dict[str, float | int | None]


def _accumulation_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


CHUNK = 1 << 20


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


STAT_KEYS = ("mean_abs", "l2_norm", "rms", "max_abs", "mean", "std", "min", "max")
_KEYS = (*STAT_KEYS, "zero_fraction")


def _rows(columns: np.ndarray) -> list[Stats]:
    """Stats dicts from the columns (l1, l2², sum, min, max, zeros, NaN/Inf, numel) of n
    tensors, derived with vectorised numpy; non-finite statistics become None. Callers hold
    `np.errstate(all="ignore")`: overflow and 0/0 become inf and NaN, reported as None."""
    l1, l2sq, total, low, high, zeros, nonfinite, numel = columns
    # One (n, 9) array written column by column (np.stack costs more than the arithmetic
    # at the lesson's sizes).
    derived = np.empty((len(numel), len(_KEYS)))
    mean, l2 = total / numel, np.sqrt(l2sq)
    np.divide(l1, numel, out=derived[:, 0])
    derived[:, 1] = l2
    np.divide(l2, np.sqrt(numel), out=derived[:, 2])
    np.maximum(np.abs(low), np.abs(high), out=derived[:, 3])
    derived[:, 4] = mean
    np.sqrt(np.maximum(l2sq / numel - mean * mean, 0.0), out=derived[:, 5])
    derived[:, 6] = low
    derived[:, 7] = high
    np.divide(zeros, numel, out=derived[:, 8])
    # NaN marks what is not finite (NaN/Inf elements, or sums that overflowed); None is
    # what JSON and the verdicts understand.
    bad = ~np.isfinite(derived)
    derived[bad] = np.nan
    any_bad = bad.any(axis=1).tolist()
    counts, sizes = nonfinite.astype(np.int64).tolist(), numel.astype(np.int64).tolist()
    stats = []
    for row, flagged, count, size in zip(derived.tolist(), any_bad, counts, sizes, strict=True):
        entry = dict(zip(_KEYS, row, strict=True))
        if flagged:
            entry.update((k, None) for k in _KEYS if entry[k] != entry[k])  # NaN
        entry["nonfinite_count"], entry["numel"] = count, size
        stats.append(entry)
    return stats


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
    np.minimum.reduceat(flat, starts, out=columns[_MIN])
    np.maximum.reduceat(flat, starts, out=columns[_MAX])
    columns[_ZEROS:_NUMEL] = sums[3:]
    columns[_NUMEL] = counts
    return columns


def _nonfinite_counts(tensors: Sequence[torch.Tensor], rows: np.ndarray) -> list[float]:
    # A finite absolute sum means every element is finite; only the rest are counted.
    return [
        count if count >= 0 else 0 if math.isfinite(l1) else int((~torch.isfinite(t)).sum())
        for t, l1, count in zip(
            tensors, rows[:, _L1].tolist(), rows[:, _NONFINITE].tolist(), strict=True
        )
    ]


# Row length of the tiled matrix, and the elements one matrix holds at most (a bounded copy).
TILE = 1 << 12
TILED_ELEMENTS = 1 << 26


def _batches(sizes: Sequence[int]) -> list[range]:
    """Consecutive index ranges whose padded sizes fit one tiled matrix (at least one each)."""
    batches, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > TILED_ELEMENTS:
            batches.append(range(start, i))
            start, total = i, 0
        total += size
    return [*batches, range(start, len(sizes))]


def _tiled_rows(tensors: Sequence[torch.Tensor], acc: torch.dtype) -> tuple[torch.Tensor, int]:
    """Per-row (l1, l2², sum, min, max, zeros) of the tensors laid out as rows of
    TILE elements, each tensor starting a new row and its last row padded with zeros; then
    the min and max of the padded rows again without their padding. Returns the flat
    partials and the number of full-matrix rows."""
    rows = [-(-t.numel() // TILE) or 1 for t in tensors]
    pads = [r * TILE - t.numel() for r, t in zip(rows, tensors, strict=True)]
    padding = tensors[0].new_zeros(max(pads), dtype=tensors[0].dtype)
    pieces = []
    for t, pad in zip(tensors, pads, strict=True):
        pieces.append(t.reshape(-1))
        if pad:
            pieces.append(padding[:pad])
    m = torch.cat(pieces).view(-1, TILE)  # (sum(rows), TILE); cat promotes mixed dtypes
    if m.dtype not in (torch.float32, torch.float64):
        m = m.float()
    low, high = torch.aminmax(m, dim=1)
    # One read of the matrix per statistic and no temporaries. Rows are summed in their dtype
    # (4096 values: exact to float rounding) and combined in `acc`.
    l1, l2 = (torch.linalg.vector_norm(m, order, dim=1) for order in (1, 2))
    zeros = m.shape[1] - torch.count_nonzero(m, dim=1)
    parts = [l1, l2.square(), m.sum(1), low, high, zeros]
    ends = np.cumsum(rows) - 1
    padded = [int(end) for end, pad in zip(ends, pads, strict=True) if pad]
    flat = torch.stack([p.to(acc) for p in parts], dim=1).reshape(-1)
    if not padded:
        return flat, len(m)
    index = torch.tensor(padded, device=m.device)
    kept = TILE - torch.tensor([pad for pad in pads if pad], device=m.device)
    inside = torch.arange(TILE, device=m.device) < kept[:, None]
    last = m.index_select(0, index)
    fixed = torch.stack(
        [last.masked_fill(~inside, math.inf).amin(1), last.masked_fill(~inside, -math.inf).amax(1)]
    )
    return torch.cat([flat, fixed.to(acc).reshape(-1)]), len(m)


def _tiled_columns(sizes: list[int], host: np.ndarray, matrix_rows: int) -> np.ndarray:
    """(8, n) columns from one matrix's partials (see `_tiled_rows`), combined per tensor."""
    rows = [-(-size // TILE) or 1 for size in sizes]
    pads = np.asarray(rows) * TILE - np.asarray(sizes)
    partials = host[: matrix_rows * 6].reshape(matrix_rows, 6).copy()
    ends = np.cumsum(rows) - 1
    fixed = host[matrix_rows * 6 :].reshape(2, -1)
    partials[ends[pads > 0], _MIN] = fixed[0]
    partials[ends[pads > 0], _MAX] = fixed[1]
    starts = np.concatenate(([0], ends[:-1] + 1))
    sums = np.add.reduceat(partials[:, [_L1, _L2SQ, _SUM, _ZEROS]], starts)
    return np.stack(
        [
            *sums[:, :3].T,
            np.minimum.reduceat(partials[:, _MIN], starts),
            np.maximum.reduceat(partials[:, _MAX], starts),
            sums[:, 3] - pads,  # the padding's zeros
            np.full(len(sizes), -1.0),  # NaN/Inf: derived from l1 (`_nonfinite_counts`)
            np.asarray(sizes, dtype=np.float64),
        ]
    )


@torch.no_grad()
def summarise_tiled(tensors: Sequence[torch.Tensor]) -> list[Stats]:
    """`summarise` in a fixed number of launches per matrix of up to TILED_ELEMENTS elements,
    with one transfer: for accelerators, where a launch costs more than reading a tensor."""
    if not tensors:
        return []
    acc = _accumulation_dtype(tensors[0].device)
    sizes = [t.numel() for t in tensors]
    batches = _batches(sizes)
    partials = [_tiled_rows([tensors[i] for i in batch], acc) for batch in batches]
    host = torch.cat([flat for flat, _ in partials]).cpu().numpy()  # one transfer
    with np.errstate(all="ignore"):
        return _rows(_combined(tensors, sizes, batches, partials, host))


def _combined(
    tensors: Sequence[torch.Tensor],
    sizes: list[int],
    batches: list[range],
    partials: list[tuple[torch.Tensor, int]],
    host: np.ndarray,
) -> np.ndarray:
    """(8, n) columns of all tensors from the partials of their matrices."""
    columns, offset = [], 0
    for batch, (flat, matrix_rows) in zip(batches, partials, strict=True):
        own = _tiled_columns(
            [sizes[i] for i in batch], host[offset : offset + len(flat)], matrix_rows
        )
        own[_NONFINITE] = _nonfinite_counts([tensors[i] for i in batch], own.T)
        columns.append(own)
        offset += len(flat)
    return np.concatenate(columns, axis=1)


@torch.no_grad()
def summarise(
    tensors: Sequence[torch.Tensor],
    large_rows: LargeRows = eager_rows,
    known: Mapping[int, torch.Tensor] | None = None,
    stack: Stack = stack_rows,
) -> list[Stats]:
    """Statistics of every tensor, in order. All tensors must share one device.

    `large_rows` reduces a matrix row by row (see `Reductions` for a fused kernel); `known`
    holds rows already computed, by `id` of their tensor; `stack` makes the matrix of
    equal-sized tensors (`Scratch.stack` reuses its memory).
    """
    if not tensors:
        return []
    if tensors[0].device.type != "cpu":
        return summarise_tiled(tensors)
    known = known or {}
    acc = _accumulation_dtype(tensors[0].device)
    sizes = [t.numel() for t in tensors]
    small = [i for i, size in enumerate(sizes) if size <= SEGMENT_LIMIT]
    large = [i for i, size in enumerate(sizes) if size > SEGMENT_LIMIT]
    computed = [i for i in large if id(tensors[i]) not in known]
    order, parts = [], []
    for members, matrix in _groups(tensors, computed, stack):
        order += members
        parts.append(large_rows(matrix, acc).reshape(-1))
    order += [i for i in large if id(tensors[i]) in known]
    parts += [known[id(tensors[i])].to(acc).reshape(-1) for i in order[len(computed) :]]
    if small:
        # One C++ call flattens and concatenates them all (what DDP uses for its buckets).
        parts.insert(0, _flatten_dense_tensors([tensors[i] for i in small]).to(acc))
    host = (torch.cat(parts) if len(parts) > 1 else parts[0]).cpu().numpy()  # one transfer
    counts = [sizes[i] for i in small]
    columns = []
    with np.errstate(all="ignore"):
        if small:
            columns.append(_segment_columns(host[: sum(counts)], counts))
        if large:
            rows = host[sum(counts) :].reshape(len(order), 8)
            rows[:, _NONFINITE] = _nonfinite_counts([tensors[i] for i in order], rows)
            columns.append(rows.T)  # (l1, l2², sum, min, max, zeros, NaN/Inf, numel)
        stats = _rows(np.concatenate(columns, axis=1) if len(columns) > 1 else columns[0])
    ordered: list[Stats] = [{}] * len(tensors)
    for position, entry in zip(small + order, stats, strict=True):
        ordered[position] = entry
    return ordered
