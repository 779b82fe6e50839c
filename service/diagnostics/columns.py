"""The column layout shared by the statistics paths, and the statistics derived from it.

Every path reduces each tensor to one row of eight numbers (l1, l2², sum, min, max, zeros,
NaN/Inf, numel); `stats_from_columns` turns them into the reported statistics.
"""

from collections.abc import Sequence

import numpy as np
import torch

# Columns of a row; NaN/Inf = -1 means "derive it from l1" (see `nonfinite_counts`).
L1, L2SQ, SUM, MIN, MAX, ZEROS, NONFINITE, NUMEL = range(8)

Stats = dict[str, float | int | None]


def accumulation_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


STAT_KEYS = ("mean_abs", "l2_norm", "rms", "max_abs", "mean", "std", "min", "max")
_KEYS = (*STAT_KEYS, "zero_fraction")


def stats_from_columns(columns: np.ndarray) -> list[Stats]:
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
    # A dict display in `_KEYS` order: half the time of dict(zip(_KEYS, row)) (0.5 against
    # 1.0 ms for 1,281 rows).
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
    for entry, flagged in zip(stats, any_bad, strict=True):
        if flagged:
            entry.update((k, None) for k in _KEYS if entry[k] != entry[k])  # NaN
    return stats


def nonfinite_counts(tensors: Sequence[torch.Tensor], rows: np.ndarray) -> np.ndarray:
    """The NaN/Inf column of `rows`, where -1 is derived: a finite absolute sum means every
    element is finite; only the rest are counted."""
    counts = rows[:, NONFINITE].copy()
    derive = counts < 0
    counts[derive] = 0
    for i in np.flatnonzero(derive & ~np.isfinite(rows[:, L1])).tolist():
        counts[i] = int((~torch.isfinite(tensors[i])).sum())
    return counts


def finish(tensors: Sequence[torch.Tensor], rows: np.ndarray) -> list[Stats]:
    """Stats of `tensors` from their (n, 8) rows: the NaN/Inf column derived where it is -1
    (in place), then the statistics."""
    with np.errstate(all="ignore"):
        rows[:, NONFINITE] = nonfinite_counts(tensors, rows)
        return stats_from_columns(rows.T)
