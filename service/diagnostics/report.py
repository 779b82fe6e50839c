"""Report assembly: parameter and layer entries, layer signals, findings."""

from collections.abc import Sequence
from typing import Literal

from service.diagnostics.verdicts import LayerSignal, ratio
from service.schemas.reports import (
    CompareReport,
    CompareSummary,
    DiagnosticsReport,
    DiagnosticsSummary,
    LayerReport,
    LayerSummary,
    ParameterReport,
    Stats,
)


def weighted_mean(
    stats: Sequence[Stats], key: Literal["mean_abs", "zero_fraction"]
) -> float | None:
    """The mean of `key` over several tensors, weighted by their sizes."""
    total = count = 0.0
    for entry in stats:
        value = entry[key]
        if value is None:
            return None
        total += value * entry["numel"]
        count += entry["numel"]
    return total / count if count else None


def parameter_report(
    name: str, shape: list[int], layer: str | None, grad: Stats | None, value: Stats
) -> ParameterReport:
    update_scale = ratio(grad["l2_norm"] if grad else None, value["l2_norm"])
    return {
        "name": name,
        "layer": layer,
        "shape": shape,
        "grad": grad,
        "value": value,
        "grad_to_value_ratio": update_scale,
    }


def layer_signal(
    name: str,
    own: list[Stats],
    own_mean_abs: float | None,
    output: Stats | None,
    output_grad: Stats | None,
    metric: str,
) -> LayerSignal:
    """`own`: the statistics of the layer's parameter gradients (mean |grad| given)."""
    if own:
        # Dead: the layer's parameters learn nothing.
        zero_fraction = weighted_mean(own, "zero_fraction")
    else:  # without parameters: no gradient flows through it
        zero_fraction = output_grad["zero_fraction"] if output_grad is not None else None
    flowing = output_grad["mean_abs"] if output_grad is not None else None
    return LayerSignal(
        name=name,
        metric=own_mean_abs if metric == "param_grad" else flowing,
        zero_fraction=zero_fraction,
        nonfinite=any(s["nonfinite_count"] for s in (*own, output, output_grad) if s is not None),
        measured=bool(own) or output_grad is not None,
    )


def parameter_findings(parameters: list[ParameterReport]) -> list[str]:
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


def stat(stats: Stats | None, key: Literal["mean_abs", "l2_norm"]) -> float | None:
    return stats[key] if stats is not None else None


def layer_rows(report: DiagnosticsReport) -> list[LayerSummary]:
    """A row per layer: the numbers a person reads first."""
    return [
        {
            "name": layer["name"],
            "output_grad_mean_abs": stat(layer["output_grad"], "mean_abs"),
            "param_grad_mean_abs": layer["param_grad_mean_abs"],
            "relative_to_last": layer["relative_to_last"],
            "verdict": layer["verdict"],
        }
        for layer in report["layers"]
    ]


def summarise(report: DiagnosticsReport) -> DiagnosticsSummary:
    return {"diagnosis": report["diagnosis"], "loss": report["loss"], "layers": layer_rows(report)}


def summarise_compare(report: CompareReport) -> CompareSummary:
    runs = {name: summarise(run) for name, run in report["runs"].items()}
    return {"baseline": report["baseline"], "runs": runs, "ratios": report["ratios"]}


def layer_metric(layer: LayerReport, metric: str) -> float | None:
    """The mean |gradient| a layer's verdict is decided on (`output_grad` or `param_grad`)."""
    if metric == "param_grad":
        return layer["param_grad_mean_abs"]
    return stat(layer["output_grad"], "mean_abs")
