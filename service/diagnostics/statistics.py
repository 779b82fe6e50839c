"""Summary statistics of many tensors in a few batched reductions and one host transfer.

Small tensors (biases, norms, the layers of small models) are concatenated on their device,
copied to the host in one piece with the rows of the others, and reduced per segment there
with numpy's `reduceat` (a handful of vectorised calls for any number of tensors). Larger
tensors are reduced on their device in groups of equal size, stacked into one matrix
reduced row by row (one call per group: a deep stack of equal layers costs one call, not
one per layer); the largest, one at a time, without copies. Their NaN/Inf count is derived
from the absolute sum and only counted when that sum is not finite.
"""

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch._utils import _flatten_dense_tensors

# Up to this many elements a tensor is reduced on the host with numpy.
SEGMENT_LIMIT = 1 << 12
# Up to this many elements equal-sized tensors are stacked (copied) to be reduced together:
# below it a call costs more than the copy; above it, the copy more than the call.
STACK_LIMIT = 1 << 16
# Elements of one stack at most, to bound the copy.
STACK_ELEMENTS = 1 << 24

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


def _groups(
    tensors: Sequence[torch.Tensor], indices: list[int]
) -> list[tuple[list[int], torch.Tensor]]:
    """(indices, matrix) per group of equal size and dtype: stacked rows, or one view."""
    by_kind: dict[tuple[int, torch.dtype], list[int]] = {}
    for i in indices:
        by_kind.setdefault((tensors[i].numel(), tensors[i].dtype), []).append(i)
    groups = []
    for (numel, _), members in by_kind.items():
        if len(members) > 1 and numel <= STACK_LIMIT:
            per_stack = max(1, STACK_ELEMENTS // numel)
            for start in range(0, len(members), per_stack):
                chunk = members[start : start + per_stack]
                groups.append((chunk, torch.stack([tensors[i].reshape(-1) for i in chunk])))
        else:
            groups.extend(([i], tensors[i].reshape(1, -1)) for i in members)
    return groups


STAT_KEYS = ("mean_abs", "l2_norm", "rms", "max_abs", "mean", "std", "min", "max")
_KEYS = (*STAT_KEYS, "zero_fraction")


def _rows(columns: np.ndarray) -> list[Stats]:
    """Stats dicts from the columns (l1, l2², sum, min, max, zeros, NaN/Inf, numel) of n
    tensors, derived with vectorised numpy; non-finite statistics become None."""
    l1, l2sq, total, low, high, zeros, nonfinite, numel = columns
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        mean = total / numel
        l2 = np.sqrt(l2sq)
        derived = np.stack(
            [
                l1 / numel,
                l2,
                l2 / np.sqrt(numel),
                np.maximum(np.abs(low), np.abs(high)),
                mean,
                np.sqrt(np.maximum(l2sq / numel - mean * mean, 0.0)),
                low,
                high,
                zeros / numel,
            ],
            axis=1,
        )
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
    starts = np.concatenate(([0], np.cumsum(counts[:-1]))).astype(np.intp)
    with np.errstate(invalid="ignore", over="ignore"):
        sums = np.add.reduceat(
            np.stack([np.abs(flat), flat * flat, flat, flat == 0, ~np.isfinite(flat)]),
            starts,
            axis=1,
        )
        return np.stack(
            [
                *sums[:3],
                np.minimum.reduceat(flat, starts),
                np.maximum.reduceat(flat, starts),
                *sums[3:],
                np.asarray(counts, dtype=np.float64),
            ]
        )


def _nonfinite_counts(tensors: Sequence[torch.Tensor], rows: np.ndarray) -> list[float]:
    # A finite absolute sum means every element is finite; only the rest are counted.
    return [
        count if count >= 0 else 0 if math.isfinite(l1) else int((~torch.isfinite(t)).sum())
        for t, l1, count in zip(
            tensors, rows[:, _L1].tolist(), rows[:, _NONFINITE].tolist(), strict=True
        )
    ]


@torch.no_grad()
def summarise(
    tensors: Sequence[torch.Tensor],
    large_rows: LargeRows = eager_rows,
    known: Mapping[int, torch.Tensor] | None = None,
) -> list[Stats]:
    """Statistics of every tensor, in order. All tensors must share one device.

    `large_rows` reduces a matrix row by row (see `Reductions` for a fused kernel); `known`
    holds rows already computed, by `id` of their tensor.
    """
    if not tensors:
        return []
    known = known or {}
    acc = _accumulation_dtype(tensors[0].device)
    small = [i for i, t in enumerate(tensors) if t.numel() <= SEGMENT_LIMIT]
    large = [i for i, t in enumerate(tensors) if t.numel() > SEGMENT_LIMIT]
    computed = [i for i in large if id(tensors[i]) not in known]
    groups = _groups(tensors, computed)
    order = [i for members, _ in groups for i in members] + [
        i for i in large if id(tensors[i]) in known
    ]
    parts = [large_rows(matrix, acc).reshape(-1) for _, matrix in groups]
    parts += [known[id(tensors[i])].to(acc).reshape(-1) for i in order[len(computed) :]]
    if small:
        # One C++ call flattens and concatenates them all (what DDP uses for its buckets).
        parts.insert(0, _flatten_dense_tensors([tensors[i] for i in small]).to(acc))
    host = (torch.cat(parts) if len(parts) > 1 else parts[0]).cpu().numpy()  # one transfer
    counts = [tensors[i].numel() for i in small]
    columns = []
    if small:
        columns.append(_segment_columns(host[: sum(counts)], counts))
    if large:
        rows = host[sum(counts) :].reshape(len(order), 8)
        rows[:, _NONFINITE] = _nonfinite_counts([tensors[i] for i in order], rows)
        columns.append(rows.T)  # (l1, l2², sum, min, max, zeros, NaN/Inf, numel) as columns
    stats = _rows(np.concatenate(columns, axis=1) if len(columns) > 1 else columns[0])
    ordered: list[Stats] = [{}] * len(tensors)
    for position, entry in zip(small + order, stats, strict=True):
        ordered[position] = entry
    return ordered
