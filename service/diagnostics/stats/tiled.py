"""The accelerator path: on a GPU the cost is the number of kernel launches, not the bytes
(docs/design.md has the figures), so every tensor is copied into the rows of one padded
matrix, reduced row by row in a dozen launches whatever the number of tensors, and the rows
are combined per tensor on the host after one transfer.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from service.diagnostics.stats.rows import (
    COLUMNS,
    L1,
    L2SQ,
    MAX,
    MIN,
    SUM,
    ZEROS,
    Rows,
    accumulation_dtype,
)

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


@dataclass(frozen=True)
class _Layout:
    """Where the tensors of one matrix lie: each starts a row of TILE elements, and its last
    row is padded with zeros."""

    sizes: np.ndarray  # elements per tensor
    pads: np.ndarray  # zeros after each tensor
    ends: np.ndarray  # each tensor's last row
    rows: int  # rows of the matrix

    @classmethod
    def of(cls, sizes: Sequence[int]) -> "_Layout":
        counts = np.asarray(sizes, dtype=np.int64)
        rows = np.maximum(-(-counts // TILE), 1)
        ends = np.cumsum(rows) - 1
        return cls(counts, rows * TILE - counts, ends, int(rows.sum()))

    @property
    def padded(self) -> np.ndarray:
        """The last rows that hold padding."""
        return self.ends[self.pads > 0]

    @property
    def partials(self) -> int:
        """Numbers `_tiled_partials` returns: six per row, then min and max per padded row."""
        return self.rows * 6 + 2 * len(self.padded)


def _tiled_partials(
    tensors: Sequence[torch.Tensor], layout: _Layout, acc: torch.dtype
) -> torch.Tensor:
    """Per-row (l1, l2², sum, min, max, zeros) of the tensors laid out as `layout` says; then
    the min and max of the padded rows again without their padding. Flat, in `acc`."""
    padding = tensors[0].new_zeros(int(layout.pads.max()), dtype=tensors[0].dtype)
    pieces = []
    for t, pad in zip(tensors, layout.pads.tolist(), strict=True):
        pieces.append(t.reshape(-1))
        if pad:
            pieces.append(padding[:pad])
    m = torch.cat(pieces).view(-1, TILE)  # (layout.rows, TILE); cat promotes mixed dtypes
    if m.dtype not in (torch.float32, torch.float64):
        m = m.float()
    low, high = torch.aminmax(m, dim=1)
    # One read of the matrix per statistic and no temporaries. Rows are summed in their dtype
    # (4096 values: exact to float rounding) and combined in `acc`.
    l1, l2 = (torch.linalg.vector_norm(m, order, dim=1) for order in (1, 2))
    zeros = m.shape[1] - torch.count_nonzero(m, dim=1)
    parts = [l1, l2.square(), m.sum(1), low, high, zeros]
    flat = torch.stack([p.to(acc) for p in parts], dim=1).reshape(-1)
    if not len(layout.padded):
        return flat
    index = torch.tensor(layout.padded, device=m.device)
    kept = torch.tensor(TILE - layout.pads[layout.pads > 0], device=m.device)
    inside = torch.arange(TILE, device=m.device) < kept[:, None]
    last = m.index_select(0, index)
    fixed = torch.stack(
        [last.masked_fill(~inside, math.inf).amin(1), last.masked_fill(~inside, -math.inf).amax(1)]
    )
    return torch.cat([flat, fixed.to(acc).reshape(-1)])


def _tiled_columns(layout: _Layout, host: np.ndarray) -> np.ndarray:
    """(8, n) columns from one matrix's partials (see `_tiled_partials`), combined per tensor.
    The NaN/Inf column is -1: derived from l1 by `nonfinite_counts`."""
    partials = host[: layout.rows * 6].reshape(layout.rows, 6).copy()
    fixed = host[layout.rows * 6 :].reshape(2, -1)
    partials[layout.padded, MIN] = fixed[0]
    partials[layout.padded, MAX] = fixed[1]
    starts = np.concatenate(([0], layout.ends[:-1] + 1))
    sums = np.add.reduceat(partials[:, [L1, L2SQ, SUM, ZEROS]], starts)
    return np.stack(
        [
            *sums[:, :3].T,
            np.minimum.reduceat(partials[:, MIN], starts),
            np.maximum.reduceat(partials[:, MAX], starts),
            sums[:, 3] - layout.pads,  # the padding's zeros
            np.full(len(layout.sizes), -1.0),
            layout.sizes.astype(np.float64),
        ]
    )


@torch.no_grad()
def tiled_rows(tensors: Sequence[torch.Tensor]) -> Rows:
    """(n, 8) rows of tensors on one device in a fixed number of launches per matrix of up to
    TILED_ELEMENTS elements, with one transfer."""
    if not tensors:
        return np.empty((0, COLUMNS))
    acc = accumulation_dtype(tensors[0].device)
    batches = _batches([t.numel() for t in tensors])
    layouts = [_Layout.of([tensors[i].numel() for i in batch]) for batch in batches]
    flats = [
        _tiled_partials([tensors[i] for i in batch], layout, acc)
        for batch, layout in zip(batches, layouts, strict=True)
    ]
    host = torch.cat(flats).cpu().double().numpy()  # one transfer
    columns, offset = [], 0
    for layout in layouts:
        columns.append(_tiled_columns(layout, host[offset : offset + layout.partials]))
        offset += layout.partials
    return np.concatenate(columns, axis=1).T.copy()
