"""Gradients that are rounding noise: zero in exact arithmetic, not vanishing.

Some gradients are zero by construction: the key bias of softmax attention (softmax ignores
a shift of all of a query's scores, and a key bias shifts them all by q·b), a bias right
before batch norm in training mode (which removes the batch mean). Floating point computes
them as a sum of terms that cancel, and leaves the rounding error of that sum.

The rule: a parameter's gradient is rounding noise when

    0 < max|g| ≤ min(2¹⁰·eps, 2⁻⁹) · S,

eps the run dtype's machine epsilon and S the largest max|g| of the parameters of the same
reported layer (of the same module, for parameters outside the reported layers). The scale is
the layer's, not the model's: a deep sigmoid net's first layers get gradients 1e-26 of the
last layer's, computed to full relative precision (products lose no relative precision; only
cancelling sums do), and are vanishing, not noise; within one layer, the weight and bias see
the same upstream gradient. Measured (float32 and float64, GPT with qkv_bias, convolutions
before batch norm): the noise lies at 0.04–30 eps·S, growing with the number of positions a
bias sums over (30 eps at 256 images of 32×32), while genuine gradients of every model tried
(MLPs, CNNs, GPT blocks, deep sigmoid nets) are at least 0.08·S, 6·10⁵ eps in float32. 2¹⁰·eps
leaves a factor 30 above the noise and 600 below the genuine ones. bfloat16's eps (2⁻⁷) makes
2¹⁰·eps meaningless; its noise measured 1e-4 to 2e-2 of S (the CPU accumulates bfloat16 sums in
float32, but rounds every operand to 8 bits): the cap 2⁻⁹ (2e-3) catches the attention key
bias there and stays 40× below the genuine gradients, at the price of missing the noise of
biases that sum over many positions.

A gradient that is exactly zero is not noise (the dead-layer rule reports it), nor is one
with NaN or infinite values.
"""

from dataclasses import dataclass

import torch

from service.schemas.reports import Stats

EPS_MULTIPLE = 2**10
CAP = 2**-9
MAX_FINDINGS = 8


def noise_floor(dtype: torch.dtype) -> float:
    """The largest max|g| / S of a gradient that is rounding noise, for a run dtype."""
    return min(EPS_MULTIPLE * torch.finfo(dtype).eps, CAP)


@dataclass(frozen=True)
class RoundingNoise:
    flags: list[bool]  # per named parameter
    findings: list[str]


def _group(name: str, owner: str | None) -> str:
    return owner if owner is not None else name.rpartition(".")[0]


def find_rounding_noise(
    names: list[str], owners: list[str | None], grads: list[Stats | None], dtype: torch.dtype
) -> RoundingNoise:
    """Which parameters' gradients are rounding noise, and a finding for each (the first
    MAX_FINDINGS, then a count)."""
    scale: dict[str, float] = {}
    for name, owner, grad in zip(names, owners, grads, strict=True):
        if grad is not None and grad["max_abs"] is not None and not grad["nonfinite_count"]:
            key = _group(name, owner)
            scale[key] = max(scale.get(key, 0.0), grad["max_abs"])
    floor, eps = noise_floor(dtype), torch.finfo(dtype).eps
    flags: list[bool] = []
    findings: list[str] = []
    for name, owner, grad in zip(names, owners, grads, strict=True):
        key = _group(name, owner)
        largest = grad["max_abs"] if grad is not None else None
        noise = (
            grad is not None
            and not grad["nonfinite_count"]
            and largest is not None
            and 0 < largest <= floor * scale[key]
        )
        flags.append(noise)
        if noise and largest is not None and len(findings) < MAX_FINDINGS:
            where = f"in {owner}" if owner is not None else f"of {key}"
            findings.append(
                f"{name}: gradient is rounding noise (max |g| {largest:.2g} ≈ "
                f"{largest / (eps * scale[key]):.2g}·eps·scale, scale {scale[key]:.3g} the "
                f"largest |g| {where}): zero by construction, not vanishing"
            )
    extra = sum(flags) - len(findings)
    if extra > 0:
        findings.append(f"… and {extra} more parameters whose gradient is rounding noise")
    return RoundingNoise(flags, findings)
