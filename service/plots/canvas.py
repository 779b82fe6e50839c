"""What every chart shares: one fixed style, log ranges that never hide a gradient, and
bytes out (SVG with each point's exact value in a `<title>`, or PNG), the same bytes for
the same report."""

import io
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard
from xml.dom import minidom

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullFormatter
from matplotlib.typing import RcKeyType

from service.text import shorten

ImageFormat = Literal["svg", "png"]

# Fixed here so that no matplotlibrc changes a chart; the salt makes SVG ids repeatable.
STYLE: dict[RcKeyType, Any] = {
    "svg.hashsalt": "gradiag",
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "font.size": 9.0,
    "axes.grid": True,
    "axes.grid.which": "major",
    "grid.alpha": 0.25,
    "figure.dpi": 100,
    "savefig.dpi": 100,
}
SIZE_INCHES = (8.0, 4.8)
LABEL_CHARS = 40  # legend and tick labels longer than this are cut, with an ellipsis
PAD_DECADES = 0.3
MAX_DECADE_TICKS = 10  # room between the outermost value or threshold and the axis' end
LOWEST_EXPONENT, HIGHEST_EXPONENT = -320, 308  # a float64's decades

# rcParams are the process's: one chart is drawn at a time (under the style, then restored).
_STYLE_LOCK = threading.Lock()

VANISHING_COLOR, HEALTHY_COLOR, EXPLODING_COLOR = "#6baed6", "#a1d99b", "#fc9272"


@dataclass
class Marks:
    """The markers of one drawn series (SVG group `gid`), one title per marker, in order."""

    gid: str
    titles: list[str] = field(default_factory=list)


@dataclass
class Chart:
    figure: Figure
    marks: list[Marks] = field(default_factory=list)  # per-marker titles
    labels: dict[str, str] = field(default_factory=dict)  # gid -> the title of a whole group


def number(value: float | None) -> str:
    """A report's number as the report has it: the shortest repr that round-trips."""
    return "null" if value is None else repr(value)


def positive(value: float | None) -> TypeGuard[float]:
    return value is not None and math.isfinite(value) and value > 0


def log_limits(values: Iterable[float | None]) -> tuple[float, float]:
    """Whole decades spanning every positive finite value (data and thresholds alike), with
    room on both sides: a vanishing gradient stays on the chart, far below its threshold."""
    shown = [v for v in values if positive(v)]
    if not shown:
        return 0.1, 10.0
    low = math.floor(math.log10(min(shown)) - PAD_DECADES)
    high = math.ceil(math.log10(max(shown)) + PAD_DECADES)
    return 10.0 ** max(low, LOWEST_EXPONENT), 10.0 ** min(high, HIGHEST_EXPONENT)


def new_figure() -> tuple[Figure, Axes]:
    """A figure of fixed size and margins: the legend to the right of the axes. (Constrained
    layout would fit long labels, at twice the drawing time; labels are cut instead.)"""
    figure = Figure(figsize=SIZE_INCHES)
    figure.subplots_adjust(left=0.1, right=0.62, bottom=0.2, top=0.92)
    return figure, figure.add_subplot()


def short(text: str, limit: int = LABEL_CHARS) -> str:
    """A label cut to fit the chart's margins; titles keep the whole text."""
    return shorten(text, limit)


def legend(ax: Axes, handles: list[Any]) -> None:
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)


def shade_bands(ax: Axes, limits: tuple[float, float], vanishing: float, exploding: float) -> None:
    """The verdict bands: vanishing below `vanishing`, exploding above `exploding`."""
    low, high = limits
    ax.axhspan(low, vanishing, color=VANISHING_COLOR, alpha=0.18, lw=0, label="vanishing band")
    ax.axhspan(vanishing, exploding, color=HEALTHY_COLOR, alpha=0.12, lw=0, label="healthy band")
    ax.axhspan(exploding, high, color=EXPLODING_COLOR, alpha=0.18, lw=0, label="exploding band")


def fix_log_axis(ax: Axes, limits: tuple[float, float]) -> None:
    """A log axis with the given limits, kept: nothing drawn later rescales it. Ticks are
    placed here (matplotlib's locator overflows past 1e300)."""
    ax.set_yscale("log")
    low, high = (round(math.log10(limit)) for limit in limits)
    stride = max(1, math.ceil((high - low) / MAX_DECADE_TICKS))
    first = -(-low // stride) * stride  # ticks at multiples of the stride: 1e-60, 1e0, 1e60
    ax.yaxis.set_major_locator(FixedLocator([10.0**e for e in range(first, high + 1, stride)]))
    minor = [k * 10.0**e for e in range(low, high) for k in range(2, 10)] if stride == 1 else []
    ax.yaxis.set_minor_locator(FixedLocator(minor))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(*limits)
    ax.set_autoscaley_on(False)


def _with_titles(svg: bytes, chart: Chart) -> bytes:
    """Each marker of each series gets a `<title>` (its exact value), each labelled group
    one; the SVG is otherwise as matplotlib wrote it."""
    document = minidom.parseString(svg)
    groups = {g.getAttribute("id"): g for g in document.getElementsByTagName("g")}
    for marks in chart.marks:
        group = groups.get(marks.gid)
        if group is None:
            continue
        uses = group.getElementsByTagName("use")
        if len(uses) != len(marks.titles):
            raise ValueError(f"{marks.gid}: {len(uses)} markers for {len(marks.titles)} titles")
        for use, text in zip(uses, marks.titles, strict=True):
            _prepend_title(document, use, text)
    for gid, text in chart.labels.items():
        if gid in groups:
            _prepend_title(document, groups[gid], text)
    return document.toxml(encoding="utf-8")


def _prepend_title(document: minidom.Document, element: minidom.Element, text: str) -> None:
    title = document.createElement("title")
    title.appendChild(document.createTextNode(text))
    element.insertBefore(title, element.firstChild)


def draw(build: Callable[[], Chart], image: ImageFormat) -> bytes:
    """Build a chart under the fixed style and write it: SVG (with titles) or PNG."""
    out = io.BytesIO()
    with _STYLE_LOCK, matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(STYLE)
        chart = build()
        if image == "svg":
            chart.figure.savefig(out, format="svg", metadata={"Date": None})
        else:
            chart.figure.savefig(out, format="png", metadata={"Software": None})
    return _with_titles(out.getvalue(), chart) if image == "svg" else out.getvalue()
