"""Norms, noise, alignment and GSNR from each parameter's Parts (definitions: the report's
schema, service/schemas/reports.py). Whole-model sums and the noise formulas are computed in
float64 on the CPU: they are B numbers per parameter tensor."""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from service.diagnostics.per_sample.parts import Parts
from service.schemas.reports import (
    Alignment,
    GradientNoise,
    NormQuantiles,
    ParameterPerSample,
    PerSampleReport,
)

QUANTILES = {"min": 0.0, "p25": 0.25, "median": 0.5, "p75": 0.75, "max": 1.0}
# σ_j² at or below this many machine epsilons of mean_i g_ij² is rounding, not variance.
VARIANCE_FLOOR_EPS = 64


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _median(values: np.ndarray) -> float:
    """The mean of the two middle values: one selection (introselect, in place) and the least
    value above it, faster than a second selection or a sort."""
    n = len(values)
    low = (n - 1) // 2
    values.partition(low)
    high = values[low] if n % 2 else values[low + 1 :].min()
    return (float(values[low]) + float(high)) / 2


@dataclass(frozen=True)
class GSNR:
    """Of one parameter tensor: over its elements with σ_j² > 0, their count and GSNR_j's
    mean, median and fraction above 1 (NaN without such elements); and ‖ḡ‖²."""

    count: int
    mean: float
    median: float
    above_one: float
    grad_sq: float


def gsnr(parts: Parts, mean: torch.Tensor, batch: int) -> GSNR:
    """B·σ_j² = Σ_i g_ij² − B·ḡ_j² is positive beyond rounding where it exceeds
    VARIANCE_FLOOR_EPS machine epsilons of Σ_i g_ij². On the CPU in numpy, whose reductions
    and selection are several times faster than torch's there; elsewhere on the device."""
    if parts.sum_sq.device.type != "cpu":
        return _gsnr_on_device(parts.sum_sq.reshape(-1), mean.reshape(-1), batch)
    sum_sq, grad = parts.sum_sq.reshape(-1).numpy(), mean.reshape(-1).numpy()
    grad_sq = float(np.dot(grad, grad))
    signal = np.multiply(grad, grad)
    signal *= batch  # B·ḡ_j²
    excess = sum_sq - signal  # B·σ_j²
    floor = VARIANCE_FLOOR_EPS * np.finfo(sum_sq.dtype).eps
    defined = excess > floor * sum_sq  # not where non-finite
    count = int(np.count_nonzero(defined))
    if count == 0:
        return GSNR(0, math.nan, math.nan, math.nan, grad_sq)
    if count < len(sum_sq):
        signal, excess = signal[defined], excess[defined]
    ratio = np.divide(signal, excess, out=signal)
    total = float(ratio.sum(dtype=np.float64))
    above = int(np.count_nonzero(ratio > 1))
    return GSNR(count, total / count, _median(ratio), above / count, grad_sq)


def _gsnr_on_device(sum_sq: torch.Tensor, mean: torch.Tensor, batch: int) -> GSNR:
    grad_sq = float(torch.dot(mean, mean))
    signal = mean.square().mul_(batch)
    excess = sum_sq - signal
    defined = excess > VARIANCE_FLOOR_EPS * torch.finfo(sum_sq.dtype).eps * sum_sq
    count = int(defined.sum())
    if count == 0:
        return GSNR(0, math.nan, math.nan, math.nan, grad_sq)
    ratio = signal[defined] / excess[defined]
    low, high = ratio.kthvalue((count + 1) // 2).values, ratio.kthvalue(count // 2 + 1).values
    total, above = float(ratio.sum(dtype=torch.float64)), int((ratio > 1).sum())
    return GSNR(count, total / count, float(low + high) / 2, above / count, grad_sq)


@dataclass
class Summary:
    report: PerSampleReport
    parameters: list[ParameterPerSample]


def _norm_quantiles(sq_norms: torch.Tensor) -> list[NormQuantiles]:
    """Per row of (parameters, B) squared norms."""
    norms = sq_norms.double().clamp_min(0).sqrt().cpu()
    levels = torch.tensor(list(QUANTILES.values()), dtype=torch.float64)
    values = torch.quantile(norms, levels, dim=1).T.tolist()
    return [
        {"min": finite(q[0]), "p25": finite(q[1]), "median": finite(q[2]), "p75": finite(q[3]),
         "max": finite(q[4])}
        for q in values
    ]  # fmt: skip


def noise(sq_norms: torch.Tensor, dots: torch.Tensor, grad_sq: float) -> GradientNoise:
    """From the per-sample ‖g_i‖², g_i·ḡ (float64, (B,)) and ‖ḡ‖²."""
    batch = len(sq_norms)
    mean_sq = float(sq_norms.mean())
    true_sq = (batch * grad_sq - mean_sq) / (batch - 1)
    trace = batch / (batch - 1) * (mean_sq - grad_sq)
    tests: list[float | None] = [None, None, None]
    if grad_sq > 0:
        projection_var = (float(dots.square().sum()) - batch * grad_sq**2) / (batch - 1)
        orthogonal_var = (float(sq_norms.sum()) - float(dots.square().sum()) / grad_sq) / (
            batch - 1
        )
        tests = [
            math.sqrt(max(trace, 0.0) / (batch * grad_sq)),
            math.sqrt(max(projection_var, 0.0) / (batch * grad_sq**2)),
            math.sqrt(max(orthogonal_var, 0.0) / (batch * grad_sq)),
        ]
    return {
        "grad_sq_norm": finite(true_sq),
        "trace_cov": finite(trace),
        "b_simple": finite(trace / true_sq) if true_sq > 0 else None,
        "norm_test": finite(tests[0]) if tests[0] is not None else None,
        "inner_product_test": finite(tests[1]) if tests[1] is not None else None,
        "orthogonality_test": finite(tests[2]) if tests[2] is not None else None,
    }


def alignment(sq_norms: torch.Tensor, dots: torch.Tensor, grad_sq: float) -> Alignment:
    norms = sq_norms.clamp_min(0).sqrt()
    denominators = norms * math.sqrt(grad_sq)
    cosines = [
        finite(float(dot / den)) if den > 0 else None
        for dot, den in zip(dots.tolist(), denominators.tolist(), strict=True)
    ]
    negative = float((dots < 0).double().mean()) if grad_sq > 0 else None
    return {"cosines": cosines, "negative_fraction": negative}


def summarise(
    parts: Sequence[Parts],
    means: Sequence[torch.Tensor],
    batch: int,
    vmap_parameters: list[str],
) -> Summary:
    """`means`: each parameter's batch gradient ḡ in the Parts' dtype (zeros where none)."""
    entries: list[ParameterPerSample] = []
    grad_sq = 0.0
    if parts:
        quantiles = _norm_quantiles(torch.stack([p.sq_norms for p in parts]))
        for part, mean, norms in zip(parts, means, quantiles, strict=True):
            ratios = gsnr(part, mean, batch)
            grad_sq += ratios.grad_sq
            entries.append(
                {
                    "norms": norms,
                    "gsnr_mean": finite(ratios.mean),
                    "gsnr_median": finite(ratios.median),
                    "gsnr_above_one": finite(ratios.above_one),
                    "gsnr_elements": ratios.count,
                }
            )
        sq_norms = torch.stack([p.sq_norms for p in parts]).double().sum(0).cpu()
        dots = torch.stack([p.dots for p in parts]).double().sum(0).cpu()
    else:  # a model without parameters
        sq_norms = dots = torch.zeros(batch, dtype=torch.float64)
    report: PerSampleReport = {
        "batch_size": batch,
        "sample_grad_norms": [finite(v) for v in sq_norms.clamp_min(0).sqrt().tolist()],
        "grad_norm": finite(math.sqrt(grad_sq)),
        "noise": noise(sq_norms, dots, grad_sq),
        "alignment": alignment(sq_norms, dots, grad_sq),
        "vmap_parameters": vmap_parameters,
    }
    return Summary(report, entries)
