"""Verdicts per layer, relative to the last layer, and the run's diagnosis."""

from collections.abc import Sequence
from dataclasses import dataclass

from service.schemas.reports import Verdict
from service.schemas.requests import Thresholds

# Worst first: the diagnosis takes the worst verdict of any layer.
# A layer not measured says nothing of the others: the diagnosis is not_measured only when
# no layer was measured.
SEVERITY: tuple[Verdict, ...] = (
    "non_finite",
    "exploding",
    "vanishing",
    "dead",
    "healthy",
    "not_measured",
)


@dataclass(frozen=True)
class LayerSignal:
    """What the verdict of one layer is decided on."""

    name: str
    metric: float | None  # mean |gradient| by the chosen metric
    zero_fraction: float | None  # of the layer's gradient (parameters if any, else output)
    nonfinite: bool  # any NaN/Inf in its output, output gradient or parameter gradients
    measured: bool = True  # a gradient reached its output or its parameters


@dataclass(frozen=True)
class Verdicts:
    per_layer: list[Verdict]
    relative: list[float | None]
    verdict: Verdict
    first_to_last: float | None
    findings: list[str]


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, or None where either is missing or the reference is 0."""
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def judge(layers: Sequence[LayerSignal], loss_finite: bool, thresholds: Thresholds) -> Verdicts:
    """Apply the thresholds; findings say in words what the numbers say."""
    reference = next((s.metric for s in reversed(layers) if s.metric is not None), None)
    per_layer: list[Verdict] = []
    relative: list[float | None] = []
    findings: list[str] = []
    for signal in layers:
        verdict: Verdict
        relative_to_last = ratio(signal.metric, reference)
        relative.append(relative_to_last)
        if signal.nonfinite:
            verdict = "non_finite"
            findings.append(f"{signal.name}: NaN or infinite values in its output or gradients")
        elif not signal.measured:
            verdict = "not_measured"
        elif signal.zero_fraction is not None and signal.zero_fraction > thresholds.dead_fraction:
            verdict = "dead"
            findings.append(
                f"{signal.name}: {signal.zero_fraction:.1%} of its gradient is exactly zero "
                f"(dead above {thresholds.dead_fraction:.0%})"
            )
        elif relative_to_last is not None and relative_to_last < thresholds.vanishing:
            verdict = "vanishing"
            findings.append(
                f"{signal.name}: gradient {relative_to_last:.3g}x the last layer's "
                f"(vanishing below {thresholds.vanishing:g}x)"
            )
        elif relative_to_last is not None and relative_to_last > thresholds.exploding:
            verdict = "exploding"
            findings.append(
                f"{signal.name}: gradient {relative_to_last:.3g}x the last layer's "
                f"(exploding above {thresholds.exploding:g}x)"
            )
        else:
            verdict = "healthy"
        per_layer.append(verdict)
    overall: Verdict = min(per_layer, key=SEVERITY.index, default="healthy")
    if not loss_finite:
        findings.insert(0, "the loss is NaN or infinite")
        overall = "non_finite"
    unmeasured = [s.name for s in layers if not s.measured]
    if unmeasured:
        findings.append(
            f"{len(unmeasured)} of {len(layers)} layers not measured: "
            f"{', '.join(unmeasured[:8])}{', ...' if len(unmeasured) > 8 else ''} "
            "(no gradient reaches them: nothing before them requires grad)"
        )
    first = next((i for i, s in enumerate(layers) if s.measured), None)
    first_to_last = relative[first] if first is not None else None
    if overall == "healthy" and layers:
        measured = len(layers) - len(unmeasured)
        counted = f"{measured} measured" if unmeasured else f"{measured}"
        findings.append(
            f"all {counted} layers within [{thresholds.vanishing:g}, "
            f"{thresholds.exploding:g}]x of the last layer's gradient ({thresholds.metric})"
        )
    if first_to_last is not None:
        findings.append(f"first-to-last gradient ratio: {first_to_last:.3g}")
    return Verdicts(per_layer, relative, overall, first_to_last, findings)
