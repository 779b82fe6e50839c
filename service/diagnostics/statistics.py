"""Summary statistics of many tensors in a few batched reductions and one host transfer.

Small tensors (the common case: biases, norms, most layers of small models) are
concatenated on their device, copied to the host in one piece with the rows of the large
ones, and reduced per segment there with numpy's `reduceat` (a handful of vectorised calls
for any number of tensors). Large tensors are reduced on their device, each with five
single-pass kernels (no copies); their NaN/Inf count is derived from the absolute sum and
only counted when that sum is not finite.
"""

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch._utils import _flatten_dense_tensors

# Tensors up to this many elements are concatenated; larger ones are reduced in place.
SEGMENT_LIMIT = 1 << 16

# Columns of a large tensor's row; NaN/Inf = -1 means "derive it from l1".
_L1, _L2SQ, _SUM, _MIN, _MAX, _ZEROS, _NONFINITE, _NUMEL = range(8)
LargeRow = Callable[[torch.Tensor, torch.dtype], torch.Tensor]

Stats = dict[str, float | int | None]


def _accumulation_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


CHUNK = 1 << 20


def eager_row(t: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """Single-pass kernels over 1M-element chunks, combined in `acc`: chunks bound the
    temporaries of |x| and x², and keep float32 sums accurate (float32 `vector_norm` over
    millions of elements is off by 1e-4). The NaN/Inf count is left to be derived (-1)."""
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
    extra = torch.tensor([-1.0, flat.numel()], dtype=acc, device=flat.device)
    return torch.cat(
        [
            sums[:3],
            rows[:, 3].min(0, keepdim=True)[0],
            rows[:, 4].max(0, keepdim=True)[0],
            sums[3:],
            extra,
        ]
    )


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
def summarise(tensors: Sequence[torch.Tensor], large_row: LargeRow = eager_row) -> list[Stats]:
    """Statistics of every tensor, in order. All tensors must share one device.

    `large_row` reduces one large tensor to its row (see `Reductions` for a fused kernel).
    """
    if not tensors:
        return []
    acc = _accumulation_dtype(tensors[0].device)
    small = [i for i, t in enumerate(tensors) if t.numel() <= SEGMENT_LIMIT]
    large = [i for i, t in enumerate(tensors) if t.numel() > SEGMENT_LIMIT]
    parts = [large_row(tensors[i], acc) for i in large]
    if small:
        # One C++ call flattens and concatenates them all (what DDP uses for its buckets).
        flat = _flatten_dense_tensors([tensors[i] for i in small])
        parts.insert(0, flat.to(acc))
    host = (torch.cat(parts) if len(parts) > 1 else parts[0]).cpu().numpy()  # one transfer
    counts = [tensors[i].numel() for i in small]
    columns = []
    if small:
        columns.append(_segment_columns(host[: sum(counts)], counts))
    if large:
        rows = host[sum(counts) :].reshape(len(large), 8)
        rows[:, _NONFINITE] = _nonfinite_counts([tensors[i] for i in large], rows)
        columns.append(rows.T)  # (l1, l2², sum, min, max, zeros, NaN/Inf, numel) as columns
    stats = _rows(np.concatenate(columns, axis=1) if len(columns) > 1 else columns[0])
    ordered: list[Stats] = [{}] * len(tensors)
    for position, entry in zip(small + large, stats, strict=True):
        ordered[position] = entry
    return ordered
