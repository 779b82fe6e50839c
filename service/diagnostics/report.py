"""Report assembly: parameter and layer entries, layer signals, findings."""

from collections.abc import Sequence
from typing import Any

from service.diagnostics.verdicts import LayerSignal

Stats = dict[str, Any]


def weighted_mean(stats: Sequence[Stats], key: str) -> float | None:
    """The mean of `key` over several tensors, weighted by their sizes."""
    values = [(s[key], s["numel"]) for s in stats]
    if not values or any(v is None for v, _ in values):
        return None
    return sum(v * n for v, n in values) / sum(n for _, n in values)


def parameter_report(
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


def layer_signal(
    name: str, own: list[Stats], output: Stats | None, output_grad: Stats | None, metric: str
) -> LayerSignal:
    flowing = [output_grad] if output_grad is not None else []
    return LayerSignal(
        name=name,
        metric=weighted_mean(own if metric == "param_grad" else flowing, "mean_abs"),
        # Dead: the layer's parameters learn nothing (or, without parameters, no gradient).
        zero_fraction=weighted_mean(own or flowing, "zero_fraction"),
        nonfinite=any(s["nonfinite_count"] for s in [*own, *flowing, *filter(None, [output])]),
    )


def parameter_findings(parameters: list[dict[str, Any]]) -> list[str]:
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
