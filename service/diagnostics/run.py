"""One diagnostics run: build, forward, backward, statistics, verdicts.

Runs on a worker thread, never on the event loop. `cancel` is checked while a cold model is
built (between draws), at every reported layer of the forward pass and, for models big enough
for it to matter, of the backward pass, so a run whose client left or whose deadline passed
stops soon.
"""

import contextlib
import logging
import platform
import threading
import time
from collections.abc import Iterator

import torch

import service
from service.diagnostics.curvature import curvature
from service.diagnostics.losses import class_axis
from service.diagnostics.model_cache import InitialModel, ModelCache
from service.diagnostics.per_sample.report import PerSample
from service.diagnostics.plan import RunPlan
from service.diagnostics.precision import precision_check
from service.diagnostics.report import (
    layer_signal,
    parameter_findings,
    parameter_report,
    weighted_mean,
)
from service.diagnostics.rounding import find_rounding_noise
from service.diagnostics.stats import Statistics
from service.diagnostics.tensors import DTYPES
from service.diagnostics.through_time import ThroughTime, worst
from service.diagnostics.verdicts import judge
from service.errors import Cancelled, InvalidTensor, Loc, ShapeMismatch, raise_if_cancelled
from service.schemas.curvature import CurvatureReport
from service.schemas.losses import CrossEntropyLoss
from service.schemas.precision import PrecisionReport
from service.schemas.reports import DiagnosticsReport, LayerReport, Stats, Timing

logger = logging.getLogger("gradiag")


# Below this many estimated FLOPs a backward pass takes milliseconds: no need to make it
# interruptible, and per-layer hooks in it would cost more than the pass itself.
CANCEL_POINTS_MIN_FLOPS = 10**8


def _check_ids(
    ids: torch.Tensor,
    classes: int,
    loc: Loc,
    what: str,
    ignored: int | None = None,
    where: str = "",
) -> None:
    """Ids lie in [0, classes), or equal `ignored` (cross_entropy's ignore_index)."""
    outside = (ids < 0) | (ids >= classes)
    if ignored is not None:
        outside &= ids != ignored
    if outside.any():
        index = outside.nonzero()[0].tolist()
        but = f" and is not ignore_index {ignored}" if ignored is not None else ""
        raise InvalidTensor.at(
            (*loc, *index), f"{what} {int(ids[tuple(index)])} is outside [0, {classes}){but}{where}"
        )


@contextlib.contextmanager
def _refusals_as_problems(loc: Loc) -> Iterator[None]:
    """PyTorch refusing an input the shape rules let through is the request's problem.

    The plan checks every shape rule we know of; this is the net under it (for instance a
    batch norm in training mode with one value per channel). The message is PyTorch's own.
    """
    try:
        yield
    except (RuntimeError, ValueError, IndexError) as exc:
        if isinstance(exc.__cause__, Cancelled):  # raised by a hook inside backward()
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

    def timing(self, started: float) -> Timing:
        laps = self.laps
        total = round((time.perf_counter() - started) * 1000, 4)
        timing = Timing(
            build=laps["build"],
            forward=laps["forward"],
            backward=laps["backward"],
            statistics=laps["statistics"],
            total=total,
        )
        for analysis in ("through_time", "per_sample", "curvature", "precision"):
            if analysis in laps:
                timing[analysis] = laps[analysis]
        return timing


def _inputs(plan: RunPlan, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    request, dtype = plan.request, DTYPES[plan.dtype]
    input_loc, target_loc = (*plan.loc, "input"), (*plan.loc, "target")
    integers = plan.model.input_kind == "int"
    inputs = plan.literals.tensor(
        request.input, plan.input_shape, integers, dtype, input_loc, ids="token id"
    )
    if plan.model.input_classes is not None:
        _check_ids(inputs, plan.model.input_classes, input_loc, "token id")
    target = None
    if plan.target_shape is not None:
        output = list(plan.model.output_shape)
        target = plan.literals.tensor(
            request.target,
            plan.target_shape,
            plan.target_integers,
            dtype,
            target_loc,
            ids="class id",
            note=f"for class probabilities, give a target of the output's shape {output}",
        )
        if plan.target_integers:
            axis = class_axis(plan.model.output_shape, plan.model.class_dim)
            where = f" (the classes: dimension {axis} of the output {output})"
            options = request.loss
            ignored = options.ignore_index if isinstance(options, CrossEntropyLoss) else None
            _check_ids(target, output[axis], target_loc, "class id", ignored, where)
        target = target.to(device)
    return inputs.to(device), target


def run(plan: RunPlan, cancel: threading.Event, models: ModelCache) -> DiagnosticsReport:
    """Run one forward and backward pass of the plan's initial model, and report."""
    device = torch.device(plan.device)
    clock = _Clock(device)
    started = clock.last
    inputs, target = _inputs(plan, device)
    model = models.checkout(plan, cancel)
    try:
        raise_if_cancelled(cancel)
        clock.lap("build")
        return _diagnose(plan, model, inputs, target, cancel, clock, started, models.statistics)
    finally:
        models.checkin(model)


def _diagnose(
    plan: RunPlan,
    model: InitialModel,
    inputs: torch.Tensor,
    target: torch.Tensor | None,
    cancel: threading.Event,
    clock: _Clock,
    started: float,
    statistics: Statistics,
) -> DiagnosticsReport:
    request = plan.request
    module, layers, named, owners = model.module, model.layers, model.named_parameters, model.owners
    model.capture.start(cancel, plan.model.estimate.flops >= CANCEL_POINTS_MIN_FLOPS)
    through = ThroughTime(module, cancel)  # recurrent layers record what their replay needs
    per_sample = PerSample(model, plan.model.estimate) if request.per_sample else None
    recording = per_sample.recording() if per_sample else contextlib.nullcontext()
    with _refusals_as_problems(plan.loc), through.recording(), recording:
        output = module(inputs)
        if per_sample is not None:
            per_sample.keep_output(output)
        loss = plan.loss(output, target)
        clock.lap("forward")
        # `backward` rather than `autograd.grad(...)`: on the CPU the latter took twice as
        # long for gpt2-small, the gradients being the same.
        torch.autograd.backward(loss)
        raise_if_cancelled(cancel)
        clock.lap("backward")
    through_time = through.measure(request.thresholds)
    if through_time.reports:
        clock.lap("through_time")

    outputs = model.capture.outputs
    param_grads = [p.grad for _, p in named]
    output_grads = [t.grad if t is not None else None for t in outputs]
    present = [t for t in (*param_grads, *outputs, *output_grads) if t is not None]
    summary = statistics.summarise([loss.detach().reshape(1), *present])
    stats = iter(summary.stats)
    loss_value = next(stats)["mean"]
    grad_stats = [next(stats) if g is not None else None for g in param_grads]
    output_stats = [next(stats) if t is not None else None for t in outputs]
    output_grad_stats = [next(stats) if g is not None else None for g in output_grads]
    clock.lap("statistics")
    samples = per_sample.result(inputs, cancel) if per_sample is not None else None
    if samples is not None:
        clock.lap("per_sample")
    names = [name for name, _ in named]
    noise = find_rounding_noise(names, owners, grad_stats, DTYPES[plan.dtype])

    parameters = [
        parameter_report(name, list(param.shape), layer, grad, value)
        for (name, param), layer, grad, value in zip(
            named, owners, grad_stats, model.value_stats, strict=True
        )
    ]
    if samples is not None:
        for entry, sampled in zip(parameters, samples.parameters, strict=True):
            entry["per_sample"] = sampled
    thresholds = request.thresholds
    by_layer: dict[str, list[Stats]] = {name: [] for name, _ in layers}
    for grad, layer, is_noise in zip(grad_stats, owners, noise.flags, strict=True):
        if layer is not None and grad is not None and not is_noise:  # noise: not vanishing
            by_layer[layer].append(grad)
    own_grads = [by_layer[name] for name, _ in layers]
    own_mean_abs = [weighted_mean(own, "mean_abs") for own in own_grads]
    signals = [
        layer_signal(
            name, own, own_mean_abs[i], output_stats[i], output_grad_stats[i], thresholds.metric
        )
        for i, ((name, _), own) in enumerate(zip(layers, own_grads, strict=True))
    ]
    verdicts = judge(signals, loss_value is not None, thresholds)
    report_layers: list[LayerReport] = [
        {
            "index": i,
            "name": name,
            "output_shape": list(out.shape) if out is not None else [],
            "output": output_stats[i],
            "output_grad": output_grad_stats[i],
            "param_grad_mean_abs": own_mean_abs[i],
            "relative_to_last": verdicts.relative[i],
            "verdict": verdicts.per_layer[i],
        }
        for i, ((name, _), out) in enumerate(zip(layers, outputs, strict=True))
    ]
    findings = verdicts.findings + parameter_findings(parameters) + noise.findings
    findings += through_time.findings + (samples.findings if samples is not None else [])
    curved: CurvatureReport | None = None
    precise: PrecisionReport | None = None
    if request.curvature is not None:
        curved, more = curvature(plan, model, inputs, target, cancel)
        findings += more
        clock.lap("curvature")
    if request.precision_check:
        precise, more = precision_check(plan, model, inputs, target, grad_stats, loss_value, cancel)
        findings += more
        clock.lap("precision")
    report: DiagnosticsReport = {
        "diagnosis": {
            "verdict": worst([verdicts.verdict, *through_time.verdicts]),
            "metric": thresholds.metric,
            "first_to_last_ratio": verdicts.first_to_last,
            "findings": findings,
        },
        "loss": loss_value,
        "output_shape": list(output.shape),
        "layers": report_layers,
        "parameters": parameters,
        "provenance": {
            "service_version": service.__version__,
            "torch_version": torch.__version__.split("+")[0],
            "python_version": platform.python_version(),
            "device": str(inputs.device),
            "dtype": plan.dtype,
            "seed": request.seed,
            "mode": request.mode,
            "init_sha256": model.init_sha256,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "statistics": summary.path,
        },
        "timing_ms": clock.timing(started),
    }
    if through_time.reports:
        report["through_time"] = through_time.reports
    if samples is not None:
        report["per_sample"] = samples.report
    if curved is not None:
        report["curvature"] = curved
    if precise is not None:
        report["precision"] = precise
    return report
