"""The precision check (report section `precision`): the run repeated in float64.

The float64 pass runs the cached module itself through torch.func.functional_call, with the
run's weights upcast to float64 (so that it measures the run dtype's arithmetic, not the
rounding of its weights), the run's input and target upcast (integers as they are), copies of
the buffers, and the batch pass's dropout masks drawn as in the run's dtype (replay.py);
batch norm's running statistics are neither read nor updated in training mode.

Trust threshold: a relative error above 1e-2 in the loss or in any gradient (‖g − g₆₄‖ /
‖g₆₄‖) makes the run's dtype "not to be trusted". The diagnosis compares gradients across
layers by factors of 100 (the vanishing and exploding thresholds), so an error of 1 % cannot
change a verdict but for a layer within 1 % of a threshold; beyond it the second digit of
the statistics is the dtype's, not the model's. In float32 (eps 1.2e-7) 1e-2 is 8·10⁴ eps,
reached only by ill-conditioned arithmetic (long cancelling sums, saturated softmax): a red
flag. bfloat16's eps (7.8e-3) is of the threshold's size, so a bfloat16 run is flagged as
soon as its errors compound beyond one rounding: its statistics' second digit is noise.
A parameter whose float64 gradient is rounding noise (rounding.py, with float64's eps) is
zero by construction: its relative errors are null and it does not count against trust.
"""

import math
import threading

import torch
from torch.func import functional_call

from service.diagnostics.model_cache import InitialModel
from service.diagnostics.plan import RunPlan
from service.diagnostics.replay import replaying
from service.diagnostics.rounding import find_rounding_noise
from service.diagnostics.tensors import DTYPES
from service.errors import raise_if_cancelled
from service.schemas.precision import ParameterPrecision, PrecisionReport
from service.schemas.reports import Stats as StatsDict

THRESHOLD = 1e-2
REFERENCE = torch.float64


def _relative(value: float | None, reference: float) -> float | None:
    if value is None or reference == 0 or not math.isfinite(reference):
        return None
    error = abs(value - reference) / abs(reference)
    return error if math.isfinite(error) else None


def _upcast(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(REFERENCE) if tensor.is_floating_point() else tensor.detach()


def _summary(grad: torch.Tensor) -> StatsDict:
    """The statistics rounding.py reads, of a float64 gradient."""
    absolute = grad.abs()
    return {
        "mean_abs": absolute.mean().item(),
        "l2_norm": grad.norm().item(),
        "rms": None,
        "max_abs": absolute.max().item() if grad.numel() else 0.0,
        "mean": None,
        "std": None,
        "min": None,
        "max": None,
        "zero_fraction": None,
        "nonfinite_count": int((~torch.isfinite(grad)).sum()),
        "numel": grad.numel(),
    }


def _parameter(
    name: str, grad: torch.Tensor | None, stats: StatsDict | None, g64: torch.Tensor, noise: bool
) -> ParameterPrecision:
    entry: ParameterPrecision = {
        "name": name,
        "grad": None,
        "mean_abs": None,
        "l2_norm": None,
        "max_abs": None,
        "zero_by_construction": noise,
    }
    if grad is None or stats is None or noise:
        return entry
    reference = g64.norm().item()
    if reference > 0:
        entry["grad"] = (grad.double() - g64).norm().item() / reference
    absolute = g64.abs()
    entry["mean_abs"] = _relative(stats["mean_abs"], absolute.mean().item())
    entry["l2_norm"] = _relative(stats["l2_norm"], reference)
    entry["max_abs"] = _relative(stats["max_abs"], absolute.max().item())
    return entry


def _findings(report: PrecisionReport, untrusted: list[str]) -> list[str]:
    dtype, worst = report["dtype"], report["max_grad_error"]
    if untrusted:
        return [
            f"{dtype} is not to be trusted here (relative error against float64 above "
            f"{THRESHOLD:g}): " + ", ".join(untrusted[:6])
        ]
    loss = report["loss"]
    return [
        f"{dtype} agrees with float64: gradients within {worst or 0:.2g} relative, the loss "
        f"within {loss or 0:.2g} (trusted up to {THRESHOLD:g})"
    ]


def precision_check(
    plan: RunPlan,
    model: InitialModel,
    inputs: torch.Tensor,
    target: torch.Tensor | None,
    grad_stats: list[StatsDict | None],
    loss_value: float | None,
    cancel: threading.Event,
) -> tuple[PrecisionReport, list[str]]:
    """The `precision` section and its findings; raises Cancelled at the pass's hooks."""
    report: PrecisionReport = {
        "dtype": plan.dtype,
        "reference": "float64",
        "run_is_reference": plan.dtype == "float64",
        "loss": None,
        "reference_loss": loss_value,
        "max_grad_error": None,
        "threshold": THRESHOLD,
        "trusted": True,
        "parameters": [],
    }
    if report["run_is_reference"]:
        return report, []
    raise_if_cancelled(cancel)
    names = [name for name, _ in model.named_parameters]
    params = {name: _upcast(p).requires_grad_() for name, p in model.named_parameters}
    buffers = {name: _upcast(b).clone() for name, b in model.module.named_buffers()}
    with replaying(model, mask_dtype=DTYPES[plan.dtype]):
        output = functional_call(model.module, (params, buffers), (_upcast(inputs),))
    loss = plan.loss(output, _upcast(target) if target is not None else None)
    grads = torch.autograd.grad(
        loss, list(params.values()), allow_unused=True, materialize_grads=True
    )
    raise_if_cancelled(cancel)
    noise = find_rounding_noise(names, model.owners, [_summary(g) for g in grads], REFERENCE)
    entries = [
        _parameter(name, param.grad, stats, g64, flag)
        for (name, param), stats, g64, flag in zip(
            model.named_parameters, grad_stats, grads, noise.flags, strict=True
        )
    ]
    reference_loss = loss.item()
    loss_error = _relative(loss_value, reference_loss)
    errors = sorted(
        ((e["grad"], e["name"]) for e in entries if e["grad"] is not None), reverse=True
    )
    untrusted = [f"{name}'s gradient {error:.2g}" for error, name in errors if error > THRESHOLD]
    if loss_value is None and math.isfinite(reference_loss):
        untrusted.insert(0, "the loss is not finite (float64's is)")
    elif loss_error is not None and loss_error > THRESHOLD:
        untrusted.insert(0, f"the loss {loss_error:.2g}")
    report["loss"] = loss_error
    report["reference_loss"] = reference_loss if math.isfinite(reference_loss) else None
    report["max_grad_error"] = errors[0][0] if errors else None
    report["trusted"] = not untrusted
    report["parameters"] = entries
    return report, _findings(report, untrusted)
