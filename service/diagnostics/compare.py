"""Compare runs: JSON Merge Patch variants of a base request, ratios against the first."""

from typing import Any

from service.diagnostics.verdicts import ratio


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, `null` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _mean_abs(entries: list[dict[str, Any]], stats_key: str) -> dict[str, float | None]:
    return {e["name"]: (e[stats_key] or {}).get("mean_abs") for e in entries}


def compare(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per parameter and per layer: each run's mean |grad| over the first run's."""
    baseline_name = next(iter(runs))
    ratios: dict[str, dict[str, dict[str, float | None]]] = {"parameters": {}, "layers": {}}
    for section, stats_key in (("parameters", "grad"), ("layers", "output_grad")):
        baseline = _mean_abs(runs[baseline_name][section], stats_key)
        for name in baseline:
            ratios[section][name] = {}
        for run_name, report in runs.items():
            values = _mean_abs(report[section], stats_key)
            for name, reference in baseline.items():
                ratios[section][name][run_name] = ratio(values.get(name), reference)
    return {"baseline": baseline_name, "runs": runs, "ratios": ratios}
