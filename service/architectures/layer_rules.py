"""What every `sequential` layer type provides, and the refusal its shape rule raises.

A shape rule maps (spec, input shape, location) to (output shape, estimate) or raises
ShapeMismatch naming the layer's index, its type and the shape it got; a builder makes the
module for a known input shape (under the meta device).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from service.architectures.base import Estimate, Shape
from service.errors import Loc, ShapeMismatch


@dataclass(frozen=True)
class LayerType:
    infer: Callable[[Any, Shape, Loc], tuple[Shape, Estimate]]
    build: Callable[[Any, Shape], nn.Module]


def fail(loc: Loc, spec: Any, shape: Shape, why: str) -> ShapeMismatch:
    index = next((p for p in reversed(loc) if isinstance(p, int)), "?")
    return ShapeMismatch.at(loc, f"layer {index} ({spec.type}) on input {list(shape)}: {why}")


def need_dims(spec: Any, shape: Shape, loc: Loc, dims: Sequence[int], what: str) -> None:
    if len(shape) not in dims:
        raise fail(loc, spec, shape, f"expects {what}")
