"""The row layout every statistics path produces, and the statistics derived from rows.

Each path reduces each tensor to one row of eight float64 numbers: (l1, l2², sum, min, max,
zeros, NaN/Inf, numel); `finish` turns an (n, 8) array of them into the reported `Stats`.
"""

from collections.abc import Sequence

import numpy as np
import torch

from service.schemas.reports import Stats

# Columns of a row; NaN/Inf = -1 means "derive it from l1" (see `nonfinite_counts`).
L1, L2SQ, SUM, MIN, MAX, ZEROS, NONFINITE, NUMEL = range(8)
COLUMNS = 8

Rows = np.ndarray  # (n, COLUMNS) float64

# The row of a tensor without elements.
EMPTY_ROW = (0.0, 0.0, 0.0, np.inf, -np.inf, 0.0, 0.0, 0.0)

_KEYS = ("mean_abs", "l2_norm", "rms", "max_abs", "mean", "std", "min", "max", "zero_fraction")


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """Sums are combined in float64, except where the device has none (Apple's MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _stats_from_columns(columns: np.ndarray) -> list[Stats]:
    """Stats from the columns of n rows, derived with vectorised numpy; statistics that are
    not finite (NaN/Inf elements, or sums that overflowed) become None."""
    l1, l2sq, total, low, high, zeros, nonfinite, numel = columns
    # One (n, 9) array written column by column: np.stack costs more than the arithmetic.
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
    bad = ~np.isfinite(derived)
    derived[bad] = np.nan
    counts, sizes = nonfinite.astype(np.int64).tolist(), numel.astype(np.int64).tolist()
    # A dict display: half the time of dict(zip(...)) at the sizes of a deep model.
    stats: list[Stats] = [
        {
            "mean_abs": mean_abs,
            "l2_norm": l2_norm,
            "rms": rms,
            "max_abs": max_abs,
            "mean": mean_,
            "std": std,
            "min": low_,
            "max": high_,
            "zero_fraction": zero_fraction,
            "nonfinite_count": count,
            "numel": size,
        }
        for (mean_abs, l2_norm, rms, max_abs, mean_, std, low_, high_, zero_fraction), count, size
        in zip(derived.tolist(), counts, sizes, strict=True)
    ]  # fmt: skip
    for i in np.flatnonzero(bad.any(axis=1)).tolist():
        entry = stats[i]
        for key in _KEYS:
            if entry[key] != entry[key]:  # type: ignore[literal-required]  # NaN
                entry[key] = None  # type: ignore[literal-required]
    return stats


def nonfinite_counts(tensors: Sequence[torch.Tensor], rows: Rows) -> np.ndarray:
    """The NaN/Inf column of `rows`, where -1 is derived: a finite absolute sum means every
    element is finite; only the rest are counted."""
    counts = rows[:, NONFINITE].copy()
    derive = counts < 0
    counts[derive] = 0
    for i in np.flatnonzero(derive & ~np.isfinite(rows[:, L1])).tolist():
        counts[i] = int((~torch.isfinite(tensors[i])).sum())
    return counts


def finish(tensors: Sequence[torch.Tensor], rows: Rows) -> list[Stats]:
    """Stats of `tensors` from their rows: the NaN/Inf column derived where it is -1 (in
    place), then the statistics. Overflow and 0/0 become inf and NaN, reported as None."""
    with np.errstate(all="ignore"):
        rows[:, NONFINITE] = nonfinite_counts(tensors, rows)
        return _stats_from_columns(rows.T)
