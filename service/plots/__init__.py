"""Gradient-flow charts of reports (matplotlib's object API on Agg, no pyplot): SVG with each
point's exact value in a `<title>`, or PNG."""

from service.plots.canvas import ImageFormat
from service.plots.render import render

__all__ = ["ImageFormat", "render"]
