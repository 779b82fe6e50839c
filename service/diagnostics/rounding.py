"""Gradients that are rounding noise: zero in exact arithmetic, not vanishing.

Some gradients are zero by construction: the key bias of softmax attention (softmax ignores
a shift of all of a query's scores, and a key bias shifts them all by q·b), a bias right
before batch norm in training mode (which removes the batch mean). Floating point computes
them as a sum of terms that cancel, and leaves the rounding error of that sum.

The rule: a parameter's gradient is rounding noise when

    0 < max|g| ≤ min(2¹⁰·eps, 2⁻⁹) · S,

eps the run dtype's machine epsilon and S the largest max|g| of the parameters of the same
reported layer (of the same module, for parameters outside the reported layers): within one
layer the weight and bias see the same upstream gradient, while a deep net's first layers may
sit far below the last and still be exact. The measurements behind the constants are in
docs/analyses.md ("Rounding noise").

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
