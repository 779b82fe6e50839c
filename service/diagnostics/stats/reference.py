"""The reference statistics: plain torch reductions, one tensor at a time.

The fallback where the native kernel is not built (or cannot read a tensor), and the oracle
the other paths are tested against. Values are widened to float64 a chunk at a time, so the
sums are as exact as the native kernel's and the temporaries stay bounded.
"""

from collections.abc import Sequence

import numpy as np
import torch

from service.diagnostics.stats.rows import COLUMNS, EMPTY_ROW, Rows, accumulation_dtype

CHUNK = 1 << 20


def _row(t: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """(l1, l2², sum, min, max, zeros, NaN/Inf, numel) of one tensor, in `acc`, on its device."""
    flat = t.detach().reshape(-1)
    if flat.numel() == 0:
        return torch.tensor(EMPTY_ROW, dtype=acc, device=t.device)
    partials = []
    for chunk in torch.split(flat, CHUNK):
        wide = chunk.to(acc)
        low, high = torch.aminmax(wide)
        partials.append(
            torch.stack(
                [
                    wide.abs().sum(),
                    wide.square().sum(),
                    wide.sum(),
                    low,
                    high,
                    (wide == 0).sum().to(acc),
                    (~torch.isfinite(wide)).sum().to(acc),
                ]
            )
        )
    parts = torch.stack(partials)  # (chunks, 7)
    sums = parts[:, [0, 1, 2]].sum(0)
    counts = parts[:, [5, 6]].sum(0)
    numel = torch.tensor([flat.numel()], dtype=acc, device=t.device)
    return torch.cat([sums, parts[:, 3].min()[None], parts[:, 4].max()[None], counts, numel])


@torch.no_grad()
def reference_rows(tensors: Sequence[torch.Tensor]) -> Rows:
    """(n, 8) rows of tensors on one device, in order, with one transfer to the host."""
    if not tensors:
        return np.empty((0, COLUMNS))
    acc = accumulation_dtype(tensors[0].device)
    rows = torch.stack([_row(t, acc) for t in tensors])
    return rows.cpu().double().numpy()
