"""The `sequential` kind: a list of typed layers, shapes inferred from the input."""

from collections.abc import Iterator, Sequence
from typing import Any

from torch import nn

from service.architectures.base import ModelKind, ModelSignature, Shape
from service.architectures.init_schemes import InitUnit
from service.architectures.layers import build_layers, infer_layers
from service.architectures.modules import Residual
from service.errors import Loc, ShapeMismatch
from service.schemas.layers import EmbeddingLayer
from service.schemas.models import SequentialSpec


class SequentialModel(nn.Module):
    """`layers` is an nn.Sequential, so parameters are named `layers.{i}...`."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.layers(x)


def _misplaced_embedding(layers: Sequence[Any], loc: Loc, top: bool) -> Loc | None:
    for index, layer in enumerate(layers):
        if layer.type == "embedding" and not (top and index == 0):
            return (*loc, index)
        if layer.type == "residual":
            found = _misplaced_embedding(layer.body, (*loc, index, "body"), top=False)
            if found:
                return found
    return None


# First layers that take more than (batch, features): wrapping a flat list once is not enough.
_TAKES = {
    "conv1d": "(batch, channels, length)",
    "conv2d": "(batch, channels, height, width)",
    "max_pool2d": "(batch, channels, height, width)",
    "avg_pool2d": "(batch, channels, height, width)",
    **dict.fromkeys(
        (
            "conv_transpose1d",
            "max_pool1d",
            "avg_pool1d",
            "adaptive_avg_pool1d",
            "adaptive_max_pool1d",
            "dropout1d",
        ),
        "(batch, channels, length)",
    ),
    **dict.fromkeys(
        ("conv_transpose2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "dropout2d"),
        "(batch, channels, height, width)",
    ),
    **dict.fromkeys(
        ("global_avg_pool", "global_max_pool", "group_norm", "instance_norm"),
        "(batch, channels, ...)",
    ),
    "attention": "(batch, tokens, features)",
    "transformer_block": "(batch, tokens, features)",
    "positional_embedding": "(batch, tokens, features)",
    **dict.fromkeys(("rnn", "lstm", "gru"), "(batch, time steps, features)"),
}


def _check_batch(first: Any, input_shape: Shape, loc: Loc) -> None:
    """Every layer takes a batch first, so a 1-d input lacks it whatever the first layer."""
    if len(input_shape) >= 2:
        return
    if first.type == "embedding":
        takes, hint = "token ids of shape (batch, tokens)", ": wrap a single sequence as [[...]]"
    elif first.type in _TAKES:
        takes, hint = _TAKES[first.type], ""
    else:
        takes, hint = "(batch, ...)", ": wrap a single sample as [[...]]"
    raise ShapeMismatch.at(
        (*loc, "input"),
        f"input has shape {list(input_shape)}; a sequential model whose first layer is "
        f"{first.type} takes {takes}{hint}",
    )


def signature(spec: SequentialSpec, input_shape: Shape, loc: Loc) -> ModelSignature:
    layers_loc = (*loc, "model", "layers")
    misplaced = _misplaced_embedding(spec.layers, layers_loc, top=True)
    if misplaced:
        raise ShapeMismatch.at(
            misplaced, "an embedding takes the token ids: it can only be the first layer"
        )
    first = spec.layers[0]
    _check_batch(first, input_shape, loc)
    output, estimate = infer_layers(spec.layers, input_shape, layers_loc)
    if isinstance(first, EmbeddingLayer):
        return ModelSignature("int", output, estimate, input_classes=first.num_embeddings)
    return ModelSignature("float", output, estimate)


def build(spec: SequentialSpec, input_shape: Shape) -> nn.Module:
    modules, _ = build_layers(spec.layers, input_shape)
    return SequentialModel(modules)


def layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    assert isinstance(module, SequentialModel)
    return [(f"layers.{i}", layer) for i, layer in enumerate(module.layers)]


def _units(specs: Sequence[Any], modules: Sequence[nn.Module], loc: Loc) -> Iterator[InitUnit]:
    """Depth first, in registration order: a residual's body, then its projection."""
    for index, (spec, module) in enumerate(zip(specs, modules, strict=True)):
        here, what = (*loc, index), f"layer {index} ({spec.type})"
        if spec.type == "residual":
            assert isinstance(module, Residual)
            yield from _units(spec.body, list(module.body), (*here, "body"))
            own = f"{what}'s projection" if module.projection else f"{what} without projection"
            yield InitUnit(here, module.projection, spec.init, own)
        else:
            yield InitUnit(here, module, getattr(spec, "init", None), what)


def init_units(spec: SequentialSpec, module: nn.Module) -> list[InitUnit]:
    assert isinstance(module, SequentialModel)
    return list(_units(spec.layers, list(module.layers), ("layers",)))


SEQUENTIAL_KIND = ModelKind(
    signature=signature,
    build=build,
    layers=layers,
    build_uses_input_shape=True,
    init_units=init_units,
)
