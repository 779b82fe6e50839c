"""Summary statistics of many tensors in a few batched reductions and one host transfer.

Small tensors are concatenated and reduced per segment (about fifteen kernels for any
number of tensors); large ones are reduced one by one with single-pass kernels, so that no
large copy is made. Every statistic lands in one (tensors, 8) matrix that is copied to the
host once.
"""

import math
from collections.abc import Sequence

import torch

# Tensors at most this large are concatenated; larger ones are reduced on their own.
SEGMENT_LIMIT = 1 << 16

# Column order of the device-side matrix.
_L1, _L2SQ, _SUM, _MIN, _MAX, _ZEROS, _NONFINITE, _NUMEL = range(8)


def _accumulation_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _segment_rows(tensors: Sequence[torch.Tensor], acc: torch.dtype) -> torch.Tensor:
    device = tensors[0].device
    counts = torch.tensor([t.numel() for t in tensors], device=device)
    flat = torch.cat([t.detach().reshape(-1).to(acc) for t in tensors])
    segment = torch.repeat_interleave(torch.arange(len(tensors), device=device), counts)
    n = len(tensors)

    def per_segment(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n, dtype=acc, device=device).index_add_(0, segment, values)

    def extreme(reduce: str, start: float) -> torch.Tensor:
        init = torch.full((n,), start, dtype=acc, device=device)
        return init.scatter_reduce_(0, segment, flat, reduce, include_self=True)

    return torch.stack(
        [
            per_segment(flat.abs()),
            per_segment(flat * flat),
            per_segment(flat),
            extreme("amin", math.inf),
            extreme("amax", -math.inf),
            per_segment((flat == 0).to(acc)),
            per_segment((~torch.isfinite(flat)).to(acc)),
            counts.to(acc),
        ],
        dim=1,
    )


def _tensor_row(tensor: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    t = tensor.detach()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    numel = t.numel()
    l2 = torch.linalg.vector_norm(t, 2)
    low, high = torch.aminmax(t)
    parts = [
        torch.linalg.vector_norm(t, 1),
        l2 * l2,
        t.sum(),
        low,
        high,
        numel - torch.count_nonzero(t),
        numel - torch.isfinite(t).sum(),
        torch.tensor(numel, device=t.device),
    ]
    return torch.stack([p.to(acc) for p in parts])


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _as_stats(row: list[float]) -> dict[str, float | int | None]:
    numel = row[_NUMEL]
    l1, l2sq, total, low, high = row[_L1], row[_L2SQ], row[_SUM], row[_MIN], row[_MAX]
    mean = total / numel
    variance = max(l2sq / numel - mean * mean, 0.0)
    l2 = math.sqrt(l2sq) if l2sq >= 0 else math.nan
    return {
        "mean_abs": _finite_or_none(l1 / numel),
        "l2_norm": _finite_or_none(l2),
        "rms": _finite_or_none(l2 / math.sqrt(numel)),
        "max_abs": _finite_or_none(max(abs(low), abs(high))),
        "mean": _finite_or_none(mean),
        "std": _finite_or_none(math.sqrt(variance)),
        "min": _finite_or_none(low),
        "max": _finite_or_none(high),
        "zero_fraction": row[_ZEROS] / numel,
        "nonfinite_count": int(row[_NONFINITE]),
        "numel": int(numel),
    }


def summarise(tensors: Sequence[torch.Tensor]) -> list[dict[str, float | int | None]]:
    """Statistics of every tensor, in order. All tensors must share one device."""
    if not tensors:
        return []
    acc = _accumulation_dtype(tensors[0].device)
    small = [i for i, t in enumerate(tensors) if t.numel() <= SEGMENT_LIMIT]
    large = [i for i, t in enumerate(tensors) if t.numel() > SEGMENT_LIMIT]
    blocks = []
    if small:
        blocks.append(_segment_rows([tensors[i] for i in small], acc))
    blocks.extend(_tensor_row(tensors[i], acc).unsqueeze(0) for i in large)
    rows = torch.cat(blocks).cpu().tolist()  # the one device-to-host transfer
    ordered: list[list[float]] = [[]] * len(tensors)
    for position, row in zip(small + large, rows, strict=True):
        ordered[position] = row
    return [_as_stats(row) for row in ordered]
