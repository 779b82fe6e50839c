"""One diagnostics run: build, forward, backward, statistics, verdicts.

Runs on a worker thread, never on the event loop. `cancel` is checked at every layer of the
forward and backward passes, so a run whose client left or whose deadline passed stops soon.
"""

import contextlib
import hashlib
import logging
import platform
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

import service
from service.architectures.init import build_seeded
from service.architectures.modules import set_dropout_generator
from service.diagnostics.losses import LOSSES
from service.diagnostics.plan import RunPlan
from service.diagnostics.statistics import summarise
from service.diagnostics.tensors import materialise
from service.diagnostics.verdicts import LayerSignal, judge
from service.errors import Cancelled, InvalidTensor, Loc, ShapeMismatch

logger = logging.getLogger("gradiag")

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}

Stats = dict[str, Any]


def _check(cancel: threading.Event) -> None:
    if cancel.is_set():
        raise Cancelled


class LayerCapture:
    """Forward hooks that keep each layer's output and the gradient that reaches it."""

    def __init__(self, layers: Sequence[tuple[str, nn.Module]], cancel: threading.Event):
        self.layers = layers
        self.cancel = cancel
        self.outputs: list[torch.Tensor | None] = [None] * len(layers)
        self.grads: list[torch.Tensor | None] = [None] * len(layers)
        self._handles: list[Any] = []

    def _hook(self, index: int) -> Any:
        def keep_output(module: nn.Module, args: Any, output: Any) -> None:
            _check(self.cancel)
            tensor = output if isinstance(output, torch.Tensor) else output[0]
            self.outputs[index] = tensor.detach()
            if tensor.requires_grad:
                tensor.register_hook(lambda grad: self._keep_grad(index, grad))

        return keep_output

    def _keep_grad(self, index: int, grad: torch.Tensor) -> None:
        _check(self.cancel)
        self.grads[index] = grad.detach()

    def __enter__(self) -> "LayerCapture":
        self._handles = [
            m.register_forward_hook(self._hook(i)) for i, (_, m) in enumerate(self.layers)
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()


def hash_parameters(module: nn.Module) -> str:
    """sha256 over names, shapes, dtypes and raw bytes of the parameters, in order."""
    digest = hashlib.sha256()
    for name, param in module.named_parameters():
        tensor = param.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{list(param.shape)}:{param.dtype};".encode())
        digest.update(tensor.view(torch.uint8).numpy())
    return digest.hexdigest()


def _check_ids(ids: torch.Tensor, classes: int, loc: Loc, what: str) -> None:
    outside = (ids < 0) | (ids >= classes)
    if outside.any():
        index = outside.nonzero()[0].tolist()
        raise InvalidTensor.at(
            (*loc, *index), f"{what} {int(ids[tuple(index)])} is outside [0, {classes})"
        )


def _weighted_mean(stats: Sequence[Stats], key: str) -> float | None:
    values = [(s[key], s["numel"]) for s in stats]
    if not values or any(v is None for v, _ in values):
        return None
    return sum(v * n for v, n in values) / sum(n for _, n in values)


def _parameter_report(
    name: str, shape: list[int], layer: str | None, grad: Stats | None, value: Stats
) -> dict[str, Any]:
    ratio = None
    if grad is not None and grad["l2_norm"] is not None and value["l2_norm"]:
        ratio = grad["l2_norm"] / value["l2_norm"]
    return {
        "name": name,
        "layer": layer,
        "shape": shape,
        "grad": grad,
        "value": value,
        "grad_to_value_ratio": ratio,
    }


def _signal(
    name: str, own: list[Stats], output: Stats | None, output_grad: Stats | None, metric: str
) -> LayerSignal:
    flowing = [output_grad] if output_grad is not None else []
    return LayerSignal(
        name=name,
        metric=_weighted_mean(own if metric == "param_grad" else flowing, "mean_abs"),
        # Dead: the layer's parameters learn nothing (or, without parameters, no gradient).
        zero_fraction=_weighted_mean(own or flowing, "zero_fraction"),
        nonfinite=any(s["nonfinite_count"] for s in [*own, *flowing, *filter(None, [output])]),
    )


def _parameter_findings(parameters: list[dict[str, Any]]) -> list[str]:
    findings = []
    nonfinite = [p["name"] for p in parameters if p["grad"] and p["grad"]["nonfinite_count"]]
    if nonfinite:
        findings.append(
            f"{len(nonfinite)} parameters have NaN/Inf gradients: {', '.join(nonfinite[:8])}"
        )
    no_grad = [p["name"] for p in parameters if p["grad"] is None]
    if no_grad:
        findings.append(f"{len(no_grad)} parameters received no gradient: {', '.join(no_grad[:8])}")
    return findings


@contextlib.contextmanager
def _refusals_as_problems(loc: Loc) -> Iterator[None]:
    """PyTorch refusing an input the shape rules let through is the request's problem.

    The plan checks every shape rule we know of; this is the net under it (for instance a
    batch norm in training mode with one value per channel). The message is PyTorch's own.
    """
    try:
        yield
    except (RuntimeError, ValueError, IndexError) as exc:
        if isinstance(exc.__cause__, Cancelled) or isinstance(exc, Cancelled):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        logger.warning("run refused by torch: %s", message)
        raise ShapeMismatch.at(
            (*loc, "model"), f"PyTorch refused this model and input: {message}"
        ) from None


class _Clock:
    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else None
        self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        if self.sync is not None:
            self.sync()
        now = time.perf_counter()
        self.laps[name] = round((now - self.last) * 1000, 4)
        self.last = now


def run(plan: RunPlan, cancel: threading.Event) -> dict[str, Any]:
    """Build the model, run one forward and backward pass, and report."""
    request = plan.request
    device = torch.device(plan.device)
    dtype = DTYPES[plan.dtype]
    clock = _Clock(device)
    started = clock.last

    module, generator = build_seeded(
        lambda: plan.kind.build(request.model, plan.input_shape), request.seed
    )
    set_dropout_generator(module, generator)
    module = module.to(dtype=dtype)
    init_sha256 = hash_parameters(module)
    module = module.to(device).train(request.mode == "train")
    input_loc, target_loc = (*plan.loc, "input"), (*plan.loc, "target")
    inputs = materialise(
        request.input, plan.input_shape, plan.model.input_kind == "int", dtype, input_loc
    )
    if plan.model.input_classes is not None:
        _check_ids(inputs, plan.model.input_classes, input_loc, "token id")
    target = None
    if plan.target_shape is not None:
        target = materialise(
            request.target, plan.target_shape, plan.target_integers, dtype, target_loc
        )
        if plan.target_integers:
            _check_ids(target, plan.model.output_shape[-1], target_loc, "class id")
        target = target.to(device)
    inputs = inputs.to(device)
    layers = plan.kind.layers(module)
    _check(cancel)
    clock.lap("build")

    with LayerCapture(layers, cancel) as capture, _refusals_as_problems(plan.loc):
        output = module(inputs)
        loss = LOSSES[request.loss](output, target)
        clock.lap("forward")
        loss.backward()
        _check(cancel)
        clock.lap("backward")

    named = list(module.named_parameters())
    with_grad = [p.grad for _, p in named if p.grad is not None]
    outputs = [t for t in capture.outputs if t is not None]
    grads = [t for t in capture.grads if t is not None]
    stats = iter(
        summarise([loss.detach().reshape(1), *with_grad, *(p for _, p in named), *outputs, *grads])
    )
    loss_value = next(stats)["mean"]
    grad_stats = [next(stats) if p.grad is not None else None for _, p in named]
    value_stats = [next(stats) for _ in named]
    output_stats = [next(stats) if t is not None else None for t in capture.outputs]
    output_grad_stats = [next(stats) if t is not None else None for t in capture.grads]
    clock.lap("statistics")

    owner = {id(p): name for name, layer in layers for p in layer.parameters()}
    owners = [owner.get(id(p)) for _, p in named]
    parameters = [
        _parameter_report(name, list(param.shape), layer, grad, value)
        for (name, param), layer, grad, value in zip(
            named, owners, grad_stats, value_stats, strict=True
        )
    ]
    thresholds = request.thresholds
    own_grads = [
        [g for g, layer in zip(grad_stats, owners, strict=True) if layer == name and g is not None]
        for name, _ in layers
    ]
    signals = [
        _signal(name, own, output_stats[i], output_grad_stats[i], thresholds.metric)
        for i, ((name, _), own) in enumerate(zip(layers, own_grads, strict=True))
    ]
    verdicts = judge(signals, loss_value is not None, thresholds)
    report_layers = [
        {
            "index": i,
            "name": name,
            "output_shape": list(out.shape) if out is not None else [],
            "output": output_stats[i],
            "output_grad": output_grad_stats[i],
            "param_grad_mean_abs": _weighted_mean(own_grads[i], "mean_abs"),
            "relative_to_last": verdicts.relative[i],
            "verdict": verdicts.per_layer[i],
        }
        for i, ((name, _), out) in enumerate(zip(layers, capture.outputs, strict=True))
    ]
    clock.laps["total"] = round((time.perf_counter() - started) * 1000, 4)
    return {
        "loss": loss_value,
        "output_shape": list(output.shape),
        "parameters": parameters,
        "layers": report_layers,
        "diagnosis": {
            "verdict": verdicts.verdict,
            "metric": thresholds.metric,
            "first_to_last_ratio": verdicts.first_to_last,
            "findings": verdicts.findings + _parameter_findings(parameters),
        },
        "provenance": {
            "service_version": service.__version__,
            "torch_version": torch.__version__.split("+")[0],
            "python_version": platform.python_version(),
            "device": str(device),
            "dtype": plan.dtype,
            "seed": request.seed,
            "mode": request.mode,
            "init_sha256": init_sha256,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
        },
        "timing_ms": clock.laps,
    }
