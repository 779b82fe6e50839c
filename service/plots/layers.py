"""Gradient flow by layer: one diagnosis (verdict bands shaded), or a compare's variants
overlaid, each with its own thresholds (they are relative to each variant's last layer)."""

from collections.abc import Mapping

from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from service.diagnostics.report import layer_metric
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
    short,
)
from service.schemas.reports import CompareReport, DiagnosticsReport, LayerReport
from service.schemas.requests import Thresholds

MEAN_NAMES = {"output_grad": "mean |dL/d(output)|", "param_grad": "mean |dL/d(parameters)|"}
MAX_NAMES = {"output_grad": "max |dL/d(output)|", "param_grad": "max |dL/d(parameters)|"}
MAX_TICK_CHARS = 24
MAX_TITLE_CHARS = 80
MARKERS = "os^Dv"  # past ten variants the colours repeat: the marker tells them apart
MAX_NAMED_LAYERS = 24  # more layers than this: numbered ticks instead of names
MISSING_LABEL = "null or 0 (off a log axis)"
MISSING_AT = 0.03  # axes fraction where a value that a log axis cannot show is marked


def gid(kind: str, run: str) -> str:
    """The SVG id of a drawn series: `mean`, `max`, `missing`, `vanishing`, `exploding`,
    suffixed `-<variant>` in a compare."""
    return f"{kind}-{run}" if run else kind


def layer_mean(report: DiagnosticsReport, layer: LayerReport) -> float | None:
    """The verdict's metric of a layer, as the report's diagnosis names it."""
    return layer_metric(layer, report["diagnosis"]["metric"])


def layer_max(report: DiagnosticsReport, layer: LayerReport) -> float | None:
    if report["diagnosis"]["metric"] != "param_grad":
        return layer["output_grad"]["max_abs"] if layer["output_grad"] is not None else None
    grads = [p["grad"] for p in report["parameters"] if p["layer"] == layer["name"]]
    if not grads or any(g is None or g["max_abs"] is None for g in grads):
        return None
    return max(g["max_abs"] for g in grads if g is not None and g["max_abs"] is not None)


def _why_missing(layer: LayerReport, value: float | None) -> str:
    if layer["verdict"] == "not_measured":
        return "no gradient reaches it"
    return "no gradient flows" if value == 0 else "NaN, infinite or no gradient"


def reference(report: DiagnosticsReport) -> float | None:
    """What the thresholds multiply: the last layer's metric, as the verdicts take it."""
    means = [layer_mean(report, layer) for layer in report["layers"]]
    return next((m for m in reversed(means) if m is not None), None)


def threshold_lines(report: DiagnosticsReport, limits: Thresholds) -> tuple[float, float] | None:
    """Where the vanishing and exploding thresholds lie in this report's units."""
    ref = reference(report)
    if ref is None or not positive(ref):
        return None
    return limits.vanishing * ref, limits.exploding * ref


def diagnosis_chart(report: DiagnosticsReport, thresholds: Thresholds) -> Chart:
    return _flow_chart({"": report}, {"": thresholds})


def compare_chart(report: CompareReport, thresholds: Mapping[str, Thresholds]) -> Chart:
    return _flow_chart(report["runs"], thresholds)


def _flow_chart(
    runs: Mapping[str, DiagnosticsReport], thresholds: Mapping[str, Thresholds]
) -> Chart:
    single = list(runs) == [""]
    lines = {name: threshold_lines(report, thresholds[name]) for name, report in runs.items()}
    values: list[float | None] = []
    for name, report in runs.items():
        values += [layer_mean(report, layer) for layer in report["layers"]]
        if single:
            values += [layer_max(report, layer) for layer in report["layers"]]
        values += list(lines[name] or ())
    limits = log_limits(values)
    figure, ax = new_figure()
    fix_log_axis(ax, limits)
    chart = Chart(figure)
    metric = next(iter(runs.values()))["diagnosis"]["metric"]
    if single:
        report, bounds = runs[""], lines[""]
        if bounds is not None:
            shade_bands(ax, limits, *bounds)
        _series(chart, ax, "", report, "C0", MEAN_NAMES[metric], maxima=True)
        _thresholds(chart, ax, "", report, thresholds[""], "black")
        ax.set_title(f"Gradient flow by layer — verdict: {report['diagnosis']['verdict']}")
    else:
        for i, (name, report) in enumerate(runs.items()):
            color, marker = f"C{i % 10}", MARKERS[i // 10 % len(MARKERS)]
            _series(chart, ax, name, report, color, short(name), maxima=False, marker=marker)
            _thresholds(chart, ax, name, report, thresholds[name], color)
        ax.set_title(short(f"Gradient flow by layer: {' vs '.join(runs)}", MAX_TITLE_CHARS))
    _layer_ticks(ax, runs)
    ax.set_xlabel("layer, input to output")
    ax.set_ylabel(f"{MEAN_NAMES[metric]} (log)")
    handles, _ = ax.get_legend_handles_labels()
    if not single:
        handles.append(Line2D([], [], color="gray", ls="--", label="vanishing threshold, each"))
        handles.append(Line2D([], [], color="gray", ls="-.", label="exploding threshold, each"))
    handles.append(Line2D([], [], color="gray", ls="none", marker="x", label=MISSING_LABEL))
    legend(ax, handles)
    return chart


def _series(
    chart: Chart,
    ax: Axes,
    run: str,
    report: DiagnosticsReport,
    color: str,
    label: str,
    maxima: bool,
    marker: str = "o",
) -> None:
    prefix = f"{run}: " if run else ""
    metric = report["diagnosis"]["metric"]
    mean_name, max_name = MEAN_NAMES[metric], MAX_NAMES[metric]
    means = [(layer, layer_mean(report, layer)) for layer in report["layers"]]
    shown = [(layer, value) for layer, value in means if positive(value)]
    ax.plot(
        [layer["index"] for layer, _ in shown],
        [value for _, value in shown],
        color=color,
        marker=marker,
        ms=5,
        lw=1.6,
        label=label,
        gid=gid("mean", run),
    )
    chart.marks.append(
        Marks(
            gid("mean", run),
            [
                f"{prefix}{layer['name']} (layer {layer['index']}): {mean_name} "
                f"{number(value)}; {number(layer['relative_to_last'])}× the last layer's; "
                f"{layer['verdict']}"
                for layer, value in shown
            ],
        )
    )
    missing = [(layer, value) for layer, value in means if not positive(value)]
    ax.plot(
        [layer["index"] for layer, _ in missing],
        [MISSING_AT] * len(missing),
        color=color,
        marker="x",
        ms=7,
        ls="none",
        transform=ax.get_xaxis_transform(),
        gid=gid("missing", run),
        clip_on=False,
    )
    chart.marks.append(
        Marks(
            gid("missing", run),
            [
                f"{prefix}{layer['name']} (layer {layer['index']}): {mean_name} "
                f"{number(value)} (not on a log axis: {_why_missing(layer, value)}); "
                f"{layer['verdict']}"
                for layer, value in missing
            ],
        )
    )
    if maxima:
        peaks = [(layer, layer_max(report, layer)) for layer in report["layers"]]
        drawn = [(layer, value) for layer, value in peaks if positive(value)]
        ax.plot(
            [layer["index"] for layer, _ in drawn],
            [value for _, value in drawn],
            color=color,
            marker="^",
            ms=5,
            mfc="white",
            lw=1.0,
            ls=":",
            label=max_name,
            gid=gid("max", run),
        )
        chart.marks.append(
            Marks(
                gid("max", run),
                [
                    f"{prefix}{layer['name']} (layer {layer['index']}): {max_name} {number(value)}"
                    for layer, value in drawn
                ],
            )
        )


def _thresholds(
    chart: Chart,
    ax: Axes,
    run: str,
    report: DiagnosticsReport,
    thresholds: Thresholds,
    color: str,
) -> None:
    bounds = threshold_lines(report, thresholds)
    if bounds is None:
        return
    prefix = f"{run}: " if run else ""
    ref = number(reference(report))
    for kind, factor, value, style in (
        ("vanishing", thresholds.vanishing, bounds[0], "--"),
        ("exploding", thresholds.exploding, bounds[1], "-."),
    ):
        label = f"{kind} threshold ({factor:g}× the last layer's)" if not run else "_"
        ax.axhline(value, color=color, ls=style, lw=1.0, gid=gid(kind, run), label=label)
        chart.labels[gid(kind, run)] = (
            f"{prefix}{kind} threshold {number(value)} = {number(factor)} × the last layer's {ref}"
        )


def _layer_ticks(ax: Axes, runs: Mapping[str, DiagnosticsReport]) -> None:
    longest = max(runs.values(), key=lambda report: len(report["layers"]))["layers"]
    if len(longest) <= MAX_NAMED_LAYERS:
        ax.set_xticks(
            [layer["index"] for layer in longest],
            [short(layer["name"], MAX_TICK_CHARS) for layer in longest],
            rotation=30,
            ha="right",
        )
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(-0.5, max(len(longest) - 0.5, 0.5))
