"""Sweeps: expand axes into requests; summarise runs, with statistics across seeds."""

import itertools
import math
import statistics
from collections.abc import Sequence
from typing import Any

import orjson

from service.diagnostics.report import layer_rows, stat
from service.errors import InvalidRequest, Loc
from service.schemas.reports import DiagnosticsReport
from service.schemas.sweeps import SMALL_VALUE_BYTES, MeanStd, SeedGroup, SweepReport, SweepRun
from service.text import shorten

SEED_AXIS = "seed"


def path_keys(path: str) -> tuple[str | int, ...]:
    """The keys of a dotted path: digits index lists, anything else names a field."""
    return tuple(int(k) if k.isdigit() else k for k in path.split("."))


def set_path(document: dict[str, Any], path: str, value: Any, loc: Loc) -> dict[str, Any]:
    """A copy of `document` with `value` at the dotted `path` (objects created as needed)."""
    keys = path_keys(path)
    root: dict[str, Any] = dict(document)
    node: Any = root
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(key, int):
            if not isinstance(node, list) or not 0 <= key < len(node):
                raise InvalidRequest.at(loc, f"'{path}': no list item {key} in the base request")
        elif not isinstance(node, dict):
            raise InvalidRequest.at(loc, f"'{path}': '{key}' is not inside an object")
        if last:
            node[key] = value
            break
        child = node[key] if isinstance(key, int) or key in node else {}
        if not isinstance(child, dict | list):
            raise InvalidRequest.at(loc, f"'{path}': '{key}' holds a value, not an object")
        child = list(child) if isinstance(child, list) else dict(child)
        node[key] = child
        node = child
    return root


def expand(
    base: dict[str, Any], axes: Sequence[Any]
) -> list[tuple[tuple[int, ...], dict[str, Any]]]:
    """(index of each axis' value, request) for every combination, the last axis varying
    fastest."""
    combos = []
    for choice in itertools.product(*(range(len(axis.values)) for axis in axes)):
        request = base
        for index, (axis, value_index) in enumerate(zip(axes, choice, strict=True)):
            loc = ("body", "axes", index, "path")
            request = set_path(request, axis.path, axis.values[value_index], loc)
        combos.append((choice, request))
    return combos


def run_labels(axes: Sequence[Any], choices: Sequence[tuple[int, ...]]) -> list[dict[str, Any]]:
    """Each run's `point` (path -> index of its value) and `axes` (path -> value, for axes
    whose values are all small): a big value is named by its index, not repeated per run."""
    shown = [all(len(orjson.dumps(v)) <= SMALL_VALUE_BYTES for v in a.values) for a in axes]
    return [
        {
            "point": {a.path: i for a, i in zip(axes, choice, strict=True)},
            "axes": {a.path: a.values[i] for a, i, s in zip(axes, choice, shown, strict=True) if s},
        }
        for choice in choices
    ]


def axis_value(point: dict[str, int], axes: dict[str, Any], path: str, limit: int) -> str:
    """A run's value on an axis as compact JSON, or `#index` where the report names it by
    its index only."""
    if path not in axes:
        return f"#{point[path]}"
    return shorten(orjson.dumps(axes[path]).decode(), limit)


def summarise_run(label: dict[str, Any], report: DiagnosticsReport) -> SweepRun:
    return {
        "point": label["point"],
        "axes": label["axes"],
        "loss": report["loss"],
        "verdict": report["diagnosis"]["verdict"],
        "first_to_last_ratio": report["diagnosis"]["first_to_last_ratio"],
        "layers": layer_rows(report),
        "parameters": [
            {
                "name": p["name"],
                "grad_mean_abs": stat(p["grad"], "mean_abs"),
                "grad_l2_norm": stat(p["grad"], "l2_norm"),
            }
            for p in report["parameters"]
        ],
    }


def _mean_std(values: Sequence[float | None]) -> MeanStd:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(finite) != len(values) or not finite:
        return {"mean": None, "std": None, "n": len(finite)}
    std = statistics.stdev(finite) if len(finite) > 1 else None
    return {"mean": statistics.fmean(finite), "std": std, "n": len(finite)}


def across_seeds(runs: Sequence[SweepRun]) -> list[SeedGroup]:
    """Group runs by every axis but `seed`; per layer name, mean and std across seeds."""
    groups: dict[tuple[tuple[str, int], ...], list[SweepRun]] = {}
    for run in runs:
        others = tuple((k, i) for k, i in run["point"].items() if k != SEED_AXIS)
        groups.setdefault(others, []).append(run)
    summaries: list[SeedGroup] = []
    for others, members in groups.items():
        by_name = [{layer["name"]: layer for layer in m["layers"]} for m in members]
        per_name = {
            layer["name"]: [layers.get(layer["name"]) for layers in by_name]
            for layer in members[0]["layers"]
        }
        summaries.append(
            {
                "point": dict(others),
                "axes": {k: v for k, v in members[0]["axes"].items() if k != SEED_AXIS},
                "seeds": [m["axes"][SEED_AXIS] for m in members],
                "first_to_last_ratio": _mean_std([m["first_to_last_ratio"] for m in members]),
                "layers": [
                    {
                        "name": name,
                        "output_grad_mean_abs": _mean_std(
                            [x["output_grad_mean_abs"] if x else None for x in layers]
                        ),
                        "param_grad_mean_abs": _mean_std(
                            [x["param_grad_mean_abs"] if x else None for x in layers]
                        ),
                    }
                    for name, layers in per_name.items()
                ],
            }
        )
    return summaries


def sweep_report(summaries: Sequence[SweepRun]) -> SweepReport:
    """The report of a sweep from its runs' summaries (`summarise_run`), in order."""
    has_seed_axis = bool(summaries) and SEED_AXIS in summaries[0]["point"]
    return {
        "runs": list(summaries),
        "across_seeds": across_seeds(summaries) if has_seed_axis else None,
    }
