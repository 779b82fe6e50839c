"""Curvature of the batch loss at the initial weights (report section `curvature`).

Hessian-vector products by double backward: one more pass over the batch (replay.py: the
batch pass's dropout masks, running statistics untouched, hooks muted) builds ∇L with its
graph (create_graph); each product H·v = ∇(∇L·v) is then one backward pass through that
graph, which is kept between products (retain_graph): cheaper than rebuilding it per product
or torch.func's jvp(grad), which also fails on mse_loss in torch 2.13 (docs/performance.md).
∇L is taken with autograd.grad, so the run's `.grad`s stay as the batch pass left them.

Random draws come from a CPU generator seeded with the request's seed, never the global one,
in this order: the k global start vectors (standard normal in float32, tensor by tensor in
named_parameters() order), the m Rademacher probes (randint(0, 2) in int8, ·2 − 1, same
order), then each parameter tensor's min(k, size) start vectors (per_layer). Each is cast
to the run's dtype and moved to its device. Dot products and norms sum in float64.

Cancellation is checked before every product.
"""

import functools
import math
import statistics
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from service.diagnostics.model_cache import InitialModel
from service.diagnostics.plan import RunPlan
from service.diagnostics.replay import replaying
from service.diagnostics.rounding import noise_floor
from service.diagnostics.tensors import DTYPES
from service.errors import InvalidRequest, raise_if_cancelled
from service.schemas.curvature import (
    CurvatureOptions,
    CurvatureReport,
    ParameterCurvature,
    TraceEstimate,
)

Vector = list[torch.Tensor]  # one tensor per parameter (or one, for a diagonal block)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _dot(a: Vector, b: Vector) -> float:
    # Products in the run's dtype, summed in float64 (a 30th of the time of upcasting both);
    # in float32 on MPS, which has no float64.
    wide = torch.float32 if a and a[0].device.type == "mps" else torch.float64
    return float(sum(torch.sum(x * y, dtype=wide) for x, y in zip(a, b, strict=True)))


def _orthogonal(v: Vector, basis: list[Vector]) -> Vector:
    """v (changed in place) less its components along the orthonormal `basis`: deflation
    by projection."""
    for u in basis:
        along = _dot(v, u)
        for x, y in zip(v, u, strict=True):
            x.sub_(y, alpha=along)
    return v


def _normalised(v: Vector) -> tuple[Vector, float]:
    """v / ‖v‖ (in place, where the norm is finite and not 0), and ‖v‖."""
    norm = math.sqrt(_dot(v, v))
    if norm > 0 and math.isfinite(norm):
        for x in v:
            x.div_(norm)
    return v, norm


class Hessian:
    """Products with the Hessian of the batch loss through one retained graph of ∇L."""

    def __init__(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], cancel: threading.Event
    ):
        self.params = params
        self.grads = grads
        # A gradient without a graph is constant: its rows of the Hessian are zero.
        self.live = [g.requires_grad for g in grads]
        self.cancel = cancel
        self.products = 0

    def _grad(self, outputs: Vector, inputs: Vector, vectors: Vector) -> Vector:
        raise_if_cancelled(self.cancel)
        self.products += 1
        return list(
            torch.autograd.grad(
                outputs, inputs, vectors, retain_graph=True, allow_unused=True,
                materialize_grads=True,
            )
        )  # fmt: skip

    def times(self, v: Vector) -> Vector:
        """H·v = ∇(∇L·v)."""
        live = [(g, x) for g, x, alive in zip(self.grads, v, self.live, strict=True) if alive]
        if not live:
            return [torch.zeros_like(x) for x in v]
        return self._grad([g for g, _ in live], self.params, [x for _, x in live])

    def block_times(self, index: int, v: Vector) -> Vector:
        """H_pp·v for parameter `index`: ∇_p(∇_p L·v)."""
        if not self.live[index]:
            return [torch.zeros_like(v[0])]
        return self._grad([self.grads[index]], [self.params[index]], v)


@dataclass(frozen=True)
class Draws:
    """The run's random vectors, from a generator of its own (see the module's docstring)."""

    generator: torch.Generator

    @classmethod
    def seeded(cls, seed: int) -> "Draws":
        return cls(torch.Generator().manual_seed(seed))

    def normal(self, like: Vector) -> Vector:
        return [torch.randn(p.shape, generator=self.generator).to(p.device, p.dtype) for p in like]

    def rademacher(self, like: Vector) -> Vector:
        # int8 draws: a third of the time of randint's default int64
        return [
            torch.randint(0, 2, p.shape, generator=self.generator, dtype=torch.int8)
            .to(p.device, p.dtype)
            .mul_(2)
            .sub_(1)
            for p in like
        ]


@dataclass(frozen=True)
class Eigen:
    values: list[float | None]
    iterations: list[int]
    converged: bool


def power_iteration(
    product: Callable[[Vector], Vector],
    start: Callable[[], Vector],
    k: int,
    options: CurvatureOptions,
    noise: float,
    floor: float = 0.0,
) -> Eigen:
    """The k eigenvalues of largest magnitude, one after another, each iterate kept
    orthogonal to the eigenvectors found before it. An eigenvalue has converged when its
    Rayleigh quotient vᵀHv (‖v‖ = 1) moves by at most `tolerance` of itself, or by at most
    `floor`, which after the first eigenvalue λ₁ is at least noise·|λ₁|: the rounding noise of
    the products (rounding.noise_floor), in which an eigenvalue that is zero (a block that is
    zero by construction, the Hessian's null space) would otherwise wander for ever."""
    found: list[Vector] = []
    values: list[float | None] = []
    iterations: list[int] = []
    converged = True
    for _ in range(k):
        v, _ = _normalised(_orthogonal(start(), found))
        value, done, steps = math.nan, False, 0
        while steps < options.max_iterations and not done:
            steps += 1
            w = _orthogonal(product(v), found)
            new = _dot(v, w)
            done = abs(new - value) <= max(options.tolerance * abs(new), floor)
            value = new
            w, norm = _normalised(w)
            if norm == 0 or not math.isfinite(norm):  # H·v = 0: v is an eigenvector of 0
                done = norm == 0
                break
            v = w
        values.append(_finite(value))
        if len(values) == 1 and math.isfinite(value):
            floor = max(floor, noise * abs(value))
        iterations.append(steps)
        converged = converged and done
        found.append(v)
    return Eigen(values, iterations, converged)


def _trace(samples: list[float]) -> TraceEstimate | None:
    if not samples:
        return None
    stderr = statistics.stdev(samples) / math.sqrt(len(samples)) if len(samples) > 1 else None
    return {
        "estimate": _finite(statistics.fmean(samples)),
        "stderr": _finite(stderr) if stderr is not None else None,
        "samples": len(samples),
    }


def hutchinson(hessian: Hessian, draws: Draws, m: int) -> tuple[list[float], list[list[float]]]:
    """zᵀHz for m Rademacher probes z, and per tensor p z_pᵀ(Hz)_p, whose mean estimates the
    trace of the diagonal block H_pp (E[z_p z_qᵀ] = 0 for p ≠ q)."""
    total: list[float] = []
    per_tensor: list[list[float]] = [[] for _ in hessian.params]
    for _ in range(m):
        z = draws.rademacher(hessian.params)
        hz = hessian.times(z)
        parts = [_dot([a], [b]) for a, b in zip(z, hz, strict=True)]
        total.append(sum(parts))
        for samples, part in zip(per_tensor, parts, strict=True):
            samples.append(part)
    return total, per_tensor


def _findings(report: CurvatureReport, options: CurvatureOptions) -> list[str]:
    findings = []
    if not report["converged"]:
        late = [i for i, n in enumerate(report["iterations"]) if n >= options.max_iterations]
        findings.append(
            f"curvature: power iteration did not converge to tolerance {options.tolerance:g} "
            f"within {options.max_iterations} iterations (eigenvalues {late})"
        )
    product, lr = report["lr_times_lambda_max"], options.learning_rate
    if product is not None and lr is not None:
        if product > 2:
            findings.append(
                f"lr {lr:g} would diverge along the top eigenvector (lr·λ_max = {product:.3g} > 2)"
            )
        else:
            findings.append(
                f"lr {lr:g} is stable along the top eigenvector (lr·λ_max = {product:.3g} ≤ 2)"
            )
    return findings


def curvature(
    plan: RunPlan,
    model: InitialModel,
    inputs: torch.Tensor,
    target: torch.Tensor | None,
    cancel: threading.Event,
) -> tuple[CurvatureReport, list[str]]:
    """The `curvature` section and its findings; raises Cancelled between products."""
    options = plan.request.curvature
    assert options is not None
    names = [name for name, _ in model.named_parameters]
    params: Vector = [p for _, p in model.named_parameters]
    k = options.top_eigenvalues
    try:
        with replaying(model):
            loss = plan.loss(model.module(inputs), target)
        grads = torch.autograd.grad(
            loss, params, create_graph=True, allow_unused=True, materialize_grads=True
        )
        hessian = Hessian(params, list(grads), cancel)
        draws = Draws.seeded(plan.request.seed)
        noise = noise_floor(DTYPES[plan.dtype])
        top = power_iteration(hessian.times, lambda: draws.normal(params), k, options, noise)
        largest = abs(top.values[0]) if top.values[0] is not None else 0.0
        total, per_tensor = hutchinson(hessian, draws, options.trace_samples)
        per_layer: list[ParameterCurvature] | None = None
        if options.per_layer:
            per_layer = []
            for i, (name, param, layer) in enumerate(zip(names, params, model.owners, strict=True)):
                block = power_iteration(
                    functools.partial(hessian.block_times, i),
                    functools.partial(draws.normal, [param]),
                    min(k, param.numel()),
                    options,
                    noise,
                    noise * largest,
                )
                per_layer.append(
                    {
                        "name": name,
                        "layer": layer,
                        "top_eigenvalues": block.values,
                        "iterations": block.iterations,
                        "converged": block.converged,
                        "trace": _trace(per_tensor[i]),
                    }
                )
    except RuntimeError as exc:  # an operation without a second derivative
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidRequest.at(
            (*plan.loc, "curvature"),
            f"PyTorch cannot take this model's second derivatives: {message}",
        ) from None
    found = [v for v in top.values if v is not None]
    sharpness = max(found) if found else None
    lr = options.learning_rate
    report: CurvatureReport = {
        "top_eigenvalues": top.values,
        "iterations": top.iterations,
        "converged": top.converged,
        "trace": _trace(total),
        "learning_rate": lr,
        "lr_times_lambda_max": _finite(lr * sharpness) if lr and sharpness is not None else None,
        "hvps": hessian.products,
        "per_layer": per_layer,
    }
    return report, _findings(report, options)
