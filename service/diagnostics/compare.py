"""Compare runs: JSON Merge Patch variants of a base request, ratios against the first."""

from typing import Any

from service.diagnostics.verdicts import ratio
from service.schemas.reports import CompareReport, DiagnosticsReport, Ratios, Stats


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, `null` deletes, anything else replaces.

    Iterative, so that a patch nested deeper than Python's recursion limit is merged (and
    then refused by validation) rather than crashing the check."""
    if not isinstance(patch, dict):
        return patch
    root = dict(target) if isinstance(target, dict) else {}
    pending = [(root, patch)]
    while pending:
        result, changes = pending.pop()
        for key, value in changes.items():
            if value is None:
                result.pop(key, None)
            elif isinstance(value, dict):
                child = result.get(key)
                result[key] = dict(child) if isinstance(child, dict) else {}
                pending.append((result[key], value))
            else:
                result[key] = value
    return root


def _mean_abs(stats: Stats | None) -> float | None:
    return stats["mean_abs"] if stats is not None else None


def _by_name(report: DiagnosticsReport) -> dict[str, dict[str, float | None]]:
    """Mean |grad| of each parameter and of each layer's output gradient, by name."""
    return {
        "parameters": {p["name"]: _mean_abs(p["grad"]) for p in report["parameters"]},
        "layers": {layer["name"]: _mean_abs(layer["output_grad"]) for layer in report["layers"]},
    }


def _ratios(
    values: dict[str, dict[str, dict[str, float | None]]], baseline: str, section: str
) -> dict[str, dict[str, float | None]]:
    return {
        name: {run: ratio(by_name[section].get(name), reference) for run, by_name in values.items()}
        for name, reference in values[baseline][section].items()
    }


def compare(runs: dict[str, DiagnosticsReport]) -> CompareReport:
    """Per parameter and per layer: each run's mean |grad| over the first run's."""
    baseline = next(iter(runs))
    values = {name: _by_name(report) for name, report in runs.items()}
    ratios: Ratios = {
        "parameters": _ratios(values, baseline, "parameters"),
        "layers": _ratios(values, baseline, "layers"),
    }
    return {"baseline": baseline, "runs": runs, "ratios": ratios}
