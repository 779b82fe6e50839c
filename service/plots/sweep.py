"""A sweep: one swept axis on x, the first-to-last gradient ratio on a log y (mean ± std
across seeds where `seed` is an axis), a line per combination of the other axes."""

from dataclasses import dataclass
from typing import Any

from matplotlib.axes import Axes

from service.diagnostics.sweep import SEED_AXIS, axis_value
from service.plots.canvas import (
    Chart,
    Marks,
    fix_log_axis,
    legend,
    log_limits,
    new_figure,
    number,
    positive,
    shade_bands,
)
from service.schemas.requests import Thresholds
from service.schemas.sweeps import SweepReport

VALUE_CHARS = 28  # an axis value longer than this as JSON is cut, with an ellipsis
MAX_LABELLED_TICKS = 16
MISSING_AT = 0.03  # axes fraction where a ratio that a log axis cannot show is marked
DODGE = 0.25  # the width over which series at the same x are spread apart


@dataclass(frozen=True)
class Row:
    """One drawn point: the swept axes' indices and values, and its ratio."""

    point: dict[str, int]
    axes: dict[str, Any]
    mean: float | None
    std: float | None
    n: int
    verdict: str | None  # of a single run; None for statistics across seeds


def value_label(row: Row, path: str) -> str:
    """An axis value as compact JSON, or `#index` where the report names it by index."""
    return axis_value(row.point, row.axes, path, VALUE_CHARS)


def rows(report: SweepReport) -> tuple[list[Row], bool]:
    """The points to draw, and whether they are statistics across seeds."""
    runs = report["runs"]
    paths = list(runs[0]["point"]) if runs else []
    groups = report["across_seeds"]
    if groups and any(path != SEED_AXIS for path in paths):
        return [
            Row(
                g["point"],
                g["axes"],
                g["first_to_last_ratio"]["mean"],
                g["first_to_last_ratio"]["std"],
                g["first_to_last_ratio"]["n"],
                None,
            )
            for g in groups
        ], True
    return [
        Row(r["point"], r["axes"], r["first_to_last_ratio"], None, 1, r["verdict"]) for r in runs
    ], False


def sweep_chart(report: SweepReport, thresholds: Thresholds) -> Chart:
    drawn, across = rows(report)
    paths = list(drawn[0].point) if drawn else [SEED_AXIS]
    x_path = next((p for p in paths if p != SEED_AXIS), paths[0])
    others = [p for p in paths if p != x_path]
    series: dict[tuple[int, ...], list[Row]] = {}
    for row in sorted(drawn, key=lambda r: tuple(r.point[p] for p in others)):
        series.setdefault(tuple(row.point[p] for p in others), []).append(row)
    values: list[float | None] = [thresholds.vanishing, thresholds.exploding]
    for row in drawn:
        if positive(row.mean) and row.std is not None:
            assert row.mean is not None
            values += [row.mean + row.std, row.mean - row.std]
        values.append(row.mean)
    limits = log_limits(values)
    figure, ax = new_figure()
    fix_log_axis(ax, limits)
    chart = Chart(figure)
    shade_bands(ax, limits, thresholds.vanishing, thresholds.exploding)
    for kind, value, style in (
        ("vanishing", thresholds.vanishing, "--"),
        ("exploding", thresholds.exploding, "-."),
    ):
        ax.axhline(value, color="black", ls=style, lw=1.0, gid=kind, label=f"{kind} threshold")
        chart.labels[kind] = f"{kind} threshold: first-to-last ratio {number(value)}"
    width = DODGE / len(series) if len(series) > 1 else 0.0
    for k, members in enumerate(series.values()):
        offset = (k - (len(series) - 1) / 2) * width
        named = ", ".join(f"{p} = {value_label(members[0], p)}" for p in others)
        label = named or ("across seeds" if across else "runs")
        _series(chart, ax, k, members, x_path, offset, label, limits[0])
    _ticks(ax, drawn, x_path)
    ax.set_xlabel(x_path)
    spread = " (mean ± std across seeds)" if across else ""
    ax.set_ylabel(f"first-to-last gradient ratio{spread}, log")
    ax.set_title(f"Sweep: first-to-last gradient ratio by {x_path}")
    legend(ax, ax.get_legend_handles_labels()[0])
    return chart


def _series(
    chart: Chart,
    ax: Axes,
    k: int,
    members: list[Row],
    x_path: str,
    offset: float,
    label: str,
    bottom: float,
) -> None:
    color = f"C{k % 10}"
    shown = [row for row in members if positive(row.mean)]
    means = [row.mean or 0.0 for row in shown]
    below = [
        m - max(m - row.std, bottom) if row.std is not None else 0.0
        for m, row in zip(means, shown, strict=True)
    ]
    above = [row.std or 0.0 for row in shown]
    bars = ax.errorbar(
        [row.point[x_path] + offset for row in shown],
        means,
        yerr=[below, above],
        color=color,
        marker="o",
        ms=5,
        lw=1.4,
        capsize=3,
        label=label,
    )
    bars.lines[0].set_gid(f"ratio-{k}")
    chart.marks.append(Marks(f"ratio-{k}", [_title(row, label, x_path) for row in shown]))
    missing = [row for row in members if not positive(row.mean)]
    ax.plot(
        [row.point[x_path] + offset for row in missing],
        [MISSING_AT] * len(missing),
        color=color,
        marker="x",
        ms=7,
        ls="none",
        transform=ax.get_xaxis_transform(),
        gid=f"missing-{k}",
        clip_on=False,
    )
    chart.marks.append(Marks(f"missing-{k}", [_title(row, label, x_path) for row in missing]))


def _title(row: Row, label: str, x_path: str) -> str:
    where = f"{label}; {x_path} = {value_label(row, x_path)}"
    if row.verdict is None:
        return (
            f"{where}: first-to-last ratio mean {number(row.mean)} ± std {number(row.std)} "
            f"across {row.n} seeds"
        )
    return f"{where}: first-to-last ratio {number(row.mean)}; {row.verdict}"


def _ticks(ax: Axes, drawn: list[Row], x_path: str) -> None:
    labels = {row.point[x_path]: value_label(row, x_path) for row in drawn}
    positions = sorted(labels)
    step = max(1, -(-len(positions) // MAX_LABELLED_TICKS))
    shown = positions[::step]
    ax.set_xticks(shown, [labels[i] for i in shown], rotation=20, ha="right")
    ax.set_xlim(-0.5, max(positions, default=0) + 0.5)
