"""Check a request against its architecture and the budget, before anything is allocated.

Pure Python on the spec and the tensors' shapes: cheap enough to run before a request is
queued, so that an impossible or too expensive request is refused within milliseconds.
"""

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from service.architectures.base import Estimate, ModelKind, ModelSignature, Shape
from service.architectures.init_schemes import check_layer_inits
from service.architectures.registry import MODEL_KINDS
from service.config import Limits, canonical_device
from service.diagnostics.losses import LOSSES, class_axis
from service.diagnostics.per_sample import admission as per_sample_admission
from service.diagnostics.tensors import DTYPES, LiteralChecks, probe_shape
from service.errors import (
    BudgetExceeded,
    InvalidRequest,
    InvalidTensor,
    Loc,
    UnsupportedDevice,
)
from service.schemas.curvature import CurvatureOptions
from service.schemas.requests import DiagnosticsRequest
from service.schemas.tensors import RandintTensor

# What a Hessian-vector product costs beyond its arithmetic (the autograd engine's walk, the
# vector algebra in Python): measured 0.3-0.85 ms per product on the lesson's model, about
# 5·10⁶ FLOPs at the rate of a core (10¹⁰ FLOP/s); a product counts at least this much.
PRODUCT_MIN_FLOPS = 5 * 10**6


@dataclass(frozen=True)
class AnalysisCost:
    """What a run's optional analyses (curvature, precision check) add to its budget."""

    flops: int = 0
    memory_bytes: int = 0  # beyond the batch pass's peak


@dataclass(frozen=True)
class RunPlan:
    """A request that fits: what to build, where, and the shapes it will see."""

    request: DiagnosticsRequest
    kind: ModelKind
    model: ModelSignature
    input_shape: Shape
    target_shape: Shape | None
    target_integers: bool
    device: str
    dtype: str
    loc: Loc
    literals: LiteralChecks = field(default_factory=LiteralChecks, compare=False)
    analyses: AnalysisCost = field(default_factory=AnalysisCost)

    @property
    def flops(self) -> int:
        """The run's estimated FLOPs, its analyses' included."""
        return self.model.estimate.flops + self.analyses.flops

    def loss(self, output: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """The request's loss, with its options, of the model's output."""
        options = self.request.loss
        return LOSSES[options.name].function(output, target, options, self.model.class_dim)


def _target(
    request: DiagnosticsRequest, model: ModelSignature, loc: Loc
) -> tuple[Shape | None, bool]:
    """The target's shape, and whether it holds class ids, by the loss's target rule."""
    options, rule = request.loss, LOSSES[request.loss.name].target
    if rule is None:
        if request.target is not None:
            raise InvalidRequest.at((*loc, "target"), f"loss '{options.name}' takes no target")
        return None, False
    if request.target is None:
        raise InvalidRequest.at((*loc, "target"), f"loss '{options.name}' needs a target")
    shape = probe_shape(request.target, (*loc, "target"))
    ids = rule(
        options, model.output_shape, shape, model.class_dim, (*loc, "loss"), (*loc, "target")
    )
    return shape, ids


def _check_generated_ids(payload: Any, classes: int | None, loc: Loc, what: str) -> None:
    """Generated ids are checked here, against the generator's bounds, not element by element."""
    if classes is None or not isinstance(payload, RandintTensor):
        return
    if payload.low < 0:
        raise InvalidTensor.at((*loc, "low"), f"{what}s start at 0, not {payload.low}")
    if payload.high > classes:
        raise InvalidTensor.at(
            (*loc, "high"), f"{what}s lie in [0, {classes}): high must be at most {classes}"
        )


# The statistics widen a chunk of 2**20 elements to float64 at a time (stats/reference.py),
# with a few temporaries of its size.
STATISTICS_SCRATCH_BYTES = 4 * 8 * (1 << 20)
# The allocator's overhead, the small temporaries of backward kernels and, for conv nets,
# the heap glibc keeps between convolutions (measured: up to 4 % beyond the terms of
# `peak_bytes` for MLPs and transformers, 20-30 % for a ResNet; docs/performance.md).
HEADROOM = 1.3


def peak_bytes(model: ModelSignature, elements: int, dtype: str) -> int:
    """A run's peak memory: weights and their gradients, the activations saved for the
    backward pass, the layers' outputs' retained gradients, the loss's two output-sized
    gradients, the largest transient of one layer (im2col, attention scores), input and
    target, in the run's dtype, and the statistics' scratch. A model in another dtype than
    float32 is drawn in float32 and cast, so that its build holds both copies for a moment;
    bfloat16 runs are counted at float32's size, as the CPU's kernels compute them
    (docs/performance.md has the measurements). A request's runs execute one at a time per
    process, so this is also a compare's or a sweep's peak: the largest of its runs'."""
    estimate, size = model.estimate, DTYPES[dtype].itemsize
    build = estimate.parameters * (4 + size if size != 4 else size)
    tensors = (
        2 * estimate.parameters
        + estimate.activation_elements
        + estimate.output_elements
        + 2 * math.prod(model.output_shape)
        + estimate.workspace_elements
        + elements
    )
    return int(max(build, tensors * max(size, 4)) * HEADROOM) + STATISTICS_SCRATCH_BYTES


def check_budget(
    model: ModelSignature,
    elements: int,
    dtype: str,
    limits: Limits,
    analyses: AnalysisCost = AnalysisCost(),
) -> None:
    """Refuse with the estimate and the limits when any estimate exceeds its limit."""
    estimate = model.estimate
    memory = peak_bytes(model, elements, dtype) + analyses.memory_bytes
    pairs = {
        "parameters": (estimate.parameters, limits.max_parameters),
        "activation_elements": (estimate.activation_elements, limits.max_activation_elements),
        "flops": (estimate.flops + analyses.flops, limits.max_flops),
        "layers": (estimate.layers, limits.max_layers),
        "input_elements": (elements, limits.max_input_elements),
        "memory_bytes": (memory, limits.max_memory_bytes),
    }
    over = [name for name, (value, limit) in pairs.items() if value > limit]
    if over:
        raise BudgetExceeded(
            "estimated " + ", ".join(f"{n} {pairs[n][0]:,} > {pairs[n][1]:,}" for n in over),
            errors=[],
            extra={
                "estimate": {name: value for name, (value, _) in pairs.items()},
                "limit": {name: limit for name, (_, limit) in pairs.items()},
                "exceeded": over,
            },
        )


def curvature_products(options: CurvatureOptions, sizes: Sequence[int] | None) -> int:
    """The most Hessian-vector products a curvature request computes: k·max_iterations for
    the eigenvalues, one per trace probe, and with `sizes` (per_layer) min(k, size)·
    max_iterations per parameter tensor."""
    k, n = options.top_eigenvalues, options.max_iterations
    blocks = sum(min(k, size) for size in sizes) if sizes is not None else 0
    return (k + blocks) * n + options.trace_samples


def _parameter_sizes(kind: ModelKind, request: DiagnosticsRequest, input_shape: Shape) -> list[int]:
    """Each parameter tensor's size, from the module built on the meta device (no memory)."""
    with torch.device("meta"):
        module = kind.build(request.model, input_shape)
    return [p.numel() for p in module.parameters()]


def analysis_cost(
    request: DiagnosticsRequest,
    kind: ModelKind,
    model: ModelSignature,
    input_shape: Shape,
    elements: int,
    dtype: str,
    device: str,
    loc: Loc,
) -> AnalysisCost:
    """Curvature: ∇L with its graph (one forward+backward), then about two forward+backward
    passes per Hessian-vector product (PRODUCT_MIN_FLOPS at least). Its memory: five times
    the saved activations (the forward's, the backward's graph, and the product's own
    transients: measured at 2.1-2.5
    times in all for MLPs of 4×1024 at batch 2048 with relu, tanh or gelu_tanh, 3.5-4.4
    times for GPTs of width 128-512 and 64-256 tokens), the largest transient of a layer,
    and k + 5 parameter-sized vectors (∇L, the eigenvectors, the iterate and its product, a
    probe and its product). Precision check: a float64 forward+backward, at a float64 run's
    peak. The two run one after the other, after the batch pass: the larger memory counts."""
    estimate, flops, memory = model.estimate, 0, 0
    options = request.curvature
    if options is not None:
        if options.top_eigenvalues > estimate.parameters:
            raise InvalidRequest.at(
                (*loc, "curvature", "top_eigenvalues"),
                f"the model has {estimate.parameters} parameters: at most that many eigenvalues",
            )
        sizes = _parameter_sizes(kind, request, input_shape) if options.per_layer else None
        product = max(2 * estimate.flops, PRODUCT_MIN_FLOPS)
        flops += estimate.flops + product * curvature_products(options, sizes)
        graph = 5 * estimate.activation_elements + estimate.workspace_elements
        vectors = (options.top_eigenvalues + 5) * estimate.parameters
        memory = int((graph + vectors) * max(DTYPES[dtype].itemsize, 4) * HEADROOM)
    if request.precision_check and dtype != "float64":
        if device == "mps":
            raise InvalidRequest.at(
                (*loc, "precision_check"), "the precision check needs float64, which MPS lacks"
            )
        flops += estimate.flops
        memory = max(memory, peak_bytes(model, elements, "float64"))
    return AnalysisCost(flops, memory)


def plan_run(
    request: DiagnosticsRequest,
    *,
    default_device: str,
    allowed_devices: Collection[str],
    default_dtype: str,
    limits: Limits,
    loc: Loc = ("body",),
    literals: LiteralChecks | None = None,
) -> RunPlan:
    """Everything that can be refused before allocation is refused here. Runs of one
    request share `literals`, so that their common tensors are checked once."""
    literals = literals if literals is not None else LiteralChecks()
    # A request's `auto` (or none) is the server's device, whatever the machine has.
    named = request.device if request.device not in (None, "auto") else default_device
    device = canonical_device(named)
    if device not in allowed_devices:
        raise UnsupportedDevice.at(
            (*loc, "device"),
            f"device '{device}' is not allowed here; allowed: {sorted(allowed_devices)}",
        )
    kind = MODEL_KINDS[request.model.kind]
    input_shape = probe_shape(request.input, (*loc, "input"))
    model = kind.signature(request.model, input_shape, loc)
    if model.estimate.parameters == 0:
        raise InvalidRequest.at(
            (*loc, "model"),
            "the model has no parameters: nothing requires a gradient, so there is none to "
            "diagnose; add a layer with parameters",
        )
    init_flops, init_transient = check_layer_inits(kind, request.model, input_shape, loc)
    if init_flops or init_transient:
        extra = Estimate(flops=init_flops, workspace_elements=init_transient)
        model = replace(model, estimate=model.estimate + extra)
    if request.per_sample:  # refused where undefined; its costs join the budget's
        model = per_sample_admission.admit(request, model, input_shape, loc)
    target_shape, target_integers = _target(request, model, loc)
    _check_generated_ids(request.input, model.input_classes, (*loc, "input"), "token id")
    if target_integers:
        classes = model.output_shape[class_axis(model.output_shape, model.class_dim)]
        _check_generated_ids(request.target, classes, (*loc, "target"), "class id")
    elements = math.prod(input_shape) + (math.prod(target_shape) if target_shape else 0)
    dtype = request.dtype or default_dtype
    analyses = analysis_cost(request, kind, model, input_shape, elements, dtype, device, loc)
    check_budget(model, elements, dtype, limits, analyses)
    integers = model.input_kind == "int"
    literals.check(request.input, input_shape, integers, dtype, (*loc, "input"), "token id")
    if target_shape is not None:
        output = list(model.output_shape)
        note = f"for class probabilities, give a target of the output's shape {output}"
        literals.check(
            request.target, target_shape, target_integers, dtype, (*loc, "target"), "class id", note
        )
    return RunPlan(
        request=request,
        kind=kind,
        model=model,
        input_shape=input_shape,
        target_shape=target_shape,
        target_integers=target_integers,
        device=device,
        dtype=dtype,
        loc=loc,
        literals=literals,
        analyses=analyses,
    )
