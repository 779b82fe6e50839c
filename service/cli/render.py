"""Reports as a person reads them: the diagnosis first, then one row per layer (or variant,
or run) with its mean |gradient|, its ratio and its verdict, coloured."""

import math
from collections.abc import Iterable, Sequence
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from service.api.routes.meta import Capabilities
from service.client import GradiagProblem
from service.diagnostics.report import layer_metric
from service.diagnostics.sweep import axis_value
from service.schemas.reports import CompareReport, DiagnosticsReport
from service.schemas.requests import Thresholds
from service.schemas.sweeps import MeanStd, SweepReport

STYLES = {
    "healthy": "green",
    "vanishing": "yellow",
    "exploding": "red",
    "dead": "bright_black",
    "non_finite": "magenta",
    "not_measured": "dim",
}
BAR_WIDTH = 20
METRICS = {"output_grad": "mean |dL/dout|", "param_grad": "mean |param grad|"}


DEFAULTS = Thresholds()
AXIS_VALUE_CHARS = 24


def number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def verdict(name: str, bold: bool = False) -> Text:
    style = STYLES.get(name, "")
    return Text(name, style=f"bold {style}" if bold else style)


class LogScale:
    """Bars whose length is the log of a value, on a scale spanning the values shown and the
    thresholds (`marks`): never stretched so that a vanishing gradient looks healthy."""

    def __init__(self, values: Iterable[float | None], marks: Iterable[float] = ()) -> None:
        shown = [*values, *marks]
        logs = [math.log10(v) for v in shown if v is not None and 0 < v < math.inf]
        self.low = min(logs, default=0.0)
        self.high = max(logs, default=0.0)

    def bar(self, value: float | None, style: str) -> Text:
        if value is None or not 0 < value < math.inf:
            return Text("")
        span = self.high - self.low
        fraction = (math.log10(value) - self.low) / span if span > 0 else 1.0
        return Text("█" * max(1, round(fraction * BAR_WIDTH)), style=style)

    def title(self) -> str:
        return f"log scale {10**self.low:.2g} … {10**self.high:.2g}"


def diagnostics(report: DiagnosticsReport, thresholds: Thresholds = DEFAULTS) -> RenderableType:
    diagnosis = report["diagnosis"]
    layers = report["layers"]
    which = diagnosis["metric"]
    names = tuple(f"{layer['name']}:" for layer in layers)
    head = Text.assemble(("diagnosis: ", "bold"), verdict(diagnosis["verdict"], bold=True))
    notes = [Text(f"  {f}") for f in diagnosis["findings"] if not f.startswith(names)]
    values = [layer_metric(layer, which) for layer in layers]
    last = values[-1] if values and values[-1] is not None else None
    marks = [thresholds.vanishing * last, thresholds.exploding * last] if last else []
    scale = LogScale(values, marks)
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("#", justify="right")
    table.add_column("layer")
    table.add_column(METRICS.get(which, which), justify="right")
    table.add_column("÷ last", justify="right")
    table.add_column(scale.title(), no_wrap=True)
    table.add_column("verdict")
    for layer, value in zip(layers, values, strict=True):
        style = STYLES.get(layer["verdict"], "")
        table.add_row(
            str(layer["index"]),
            layer["name"],
            number(value),
            number(layer["relative_to_last"]),
            scale.bar(value, style),
            verdict(layer["verdict"]),
        )
    return Group(head, *notes, table)


def compare(report: CompareReport) -> RenderableType:
    runs = report["runs"]
    baseline = report["baseline"]
    summary = Table.grid(padding=(0, 2))
    for name, run in runs.items():
        summary.add_row(
            Text(name, style="bold"),
            verdict(run["diagnosis"]["verdict"], bold=True),
            f"first-to-last {number(run['diagnosis']['first_to_last_ratio'])}",
        )
    # The ratios are of the layers' output gradients: so are the values shown.
    table = Table(caption=f"{METRICS['output_grad']}, coloured by verdict", box=box.SIMPLE_HEAD)
    table.add_column("layer")
    for name in runs:
        table.add_column(name, justify="right")
        if name != baseline:
            table.add_column(f"÷ {baseline}", justify="right")
    by_name = {
        name: {layer["name"]: layer for layer in run["layers"]} for name, run in runs.items()
    }
    ratios = report["ratios"]["layers"]
    for layer_name in _union(layer["name"] for run in runs.values() for layer in run["layers"]):
        cells: list[Text | str] = [layer_name]
        for name in runs:
            layer = by_name[name].get(layer_name)
            if layer is None:
                cells.append("")
            else:
                value = number(layer_metric(layer, "output_grad"))
                cells.append(Text(value, style=STYLES.get(layer["verdict"], "")))
            if name != baseline:
                cells.append(number(ratios.get(layer_name, {}).get(name)))
        table.add_row(*cells)
    return Group(Text.assemble(("baseline: ", "bold"), baseline), summary, table)


def sweep(report: SweepReport, thresholds: Thresholds = DEFAULTS) -> RenderableType:
    runs = report["runs"]
    paths = list(runs[0]["point"]) if runs else []
    marks = (thresholds.vanishing, thresholds.exploding)  # the ratio's own thresholds
    scale = LogScale((run["first_to_last_ratio"] for run in runs), marks)
    table = Table(title="runs", box=box.SIMPLE_HEAD)
    for path in paths:
        table.add_column(path)
    table.add_column("loss", justify="right")
    table.add_column("first ÷ last", justify="right")
    table.add_column(scale.title(), no_wrap=True)
    table.add_column("verdict")
    for run in runs:
        style = STYLES.get(run["verdict"], "")
        table.add_row(
            *_axis_values(paths, run["point"], run["axes"]),
            number(run["loss"]),
            number(run["first_to_last_ratio"]),
            scale.bar(run["first_to_last_ratio"], style),
            verdict(run["verdict"]),
        )
    groups = report["across_seeds"]
    if not groups:
        return table
    others = list(groups[0]["point"])
    seeds = Table(title="across seeds", box=box.SIMPLE_HEAD)
    for path in others:
        seeds.add_column(path)
    seeds.add_column("seeds", justify="right")
    seeds.add_column("first ÷ last: mean ± std", justify="right")
    for group in groups:
        seeds.add_row(
            *_axis_values(others, group["point"], group["axes"]),
            str(len(group["seeds"])),
            mean_std(group["first_to_last_ratio"]),
        )
    return Group(table, Text(""), seeds)


def mean_std(value: MeanStd) -> str:
    if value["std"] is None:
        return number(value["mean"])
    return f"{number(value['mean'])} ± {number(value['std'])}"


def _with_options(loss: str, schemas: dict[str, dict[str, Any]]) -> str:
    """A loss and the options it takes: `smooth_l1 (reduction, beta)`."""
    options = [key for key in schemas.get(loss, {}).get("properties", {}) if key != "name"]
    return f"{loss} ({', '.join(options)})" if options else loss


def capabilities(found: Capabilities) -> RenderableType:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    rows = {
        "service": found.service_version,
        "backend": found.backend,
        "devices": f"{found.devices.default} (allowed: {', '.join(found.devices.allowed)})",
        "model kinds": ", ".join(found.model_kinds),
        "layer types": ", ".join(found.layer_types),
        "gpt presets": ", ".join(found.gpt_presets),
        "resnet presets": ", ".join(found.resnet_presets),
        "activations": ", ".join(found.activations),
        "losses": ", ".join(_with_options(name, found.loss_options) for name in found.losses),
        "dtypes": ", ".join(found.dtypes),
        "verdicts": ", ".join(found.verdicts),
        "request timeout": f"{found.request_timeout_s:g} s",
        "job timeout": f"{found.job_timeout_s:g} s",
        "max body": f"{found.max_body_bytes} bytes",
    }
    rows |= {name.replace("_", " "): f"{value:,}" for name, value in found.limits}
    for name, value in rows.items():
        table.add_row(name, value)
    return table


def problem(error: GradiagProblem, prefix: Sequence[str | int] = ("body",)) -> Text:
    """Title, then each location with its message (or the detail); `prefix` is left out of
    locations (the request is the file, not the body)."""
    status = f"{error.status} " if error.status is not None else ""
    text = Text.assemble(("error: ", "bold red"), (error.title, "bold"), f" ({status}{error.code})")
    for field in error.errors[:10]:
        loc = list(field.loc)
        if loc[: len(prefix)] == list(prefix):
            loc = loc[len(prefix) :]
        where = ".".join(map(str, loc)) or "the request"
        text.append(f"\n  {where}: ", style="bold")
        text.append(field.msg)
    if len(error.errors) > 10:
        text.append(f"\n  (and {len(error.errors) - 10} more)")
    if not error.errors and error.detail:
        text.append(f"\n  {error.detail}")
    if error.request_id:
        text.append(f"\n  request id: {error.request_id}", style="dim")
    return text


def _axis_values(paths: list[str], point: dict[str, int], axes: dict[str, Any]) -> list[str]:
    """Each axis's value where the report repeats it, else its index among the axis's."""
    return [axis_value(point, axes, p, AXIS_VALUE_CHARS) for p in paths]


def _union(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))
