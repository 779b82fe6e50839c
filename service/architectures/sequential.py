"""The `sequential` kind: a list of typed layers, shapes inferred from the input."""

from collections.abc import Sequence
from typing import Any

from torch import nn

from service.architectures.base import ModelKind, ModelPlan, Shape
from service.architectures.layers import build_layers, infer_layers
from service.errors import Loc, ShapeMismatch
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


def plan(spec: SequentialSpec, input_shape: Shape, loc: Loc) -> ModelPlan:
    layers_loc = (*loc, "model", "layers")
    misplaced = _misplaced_embedding(spec.layers, layers_loc, top=True)
    if misplaced:
        raise ShapeMismatch.at(
            misplaced, "an embedding takes the token ids: it can only be the first layer"
        )
    output, estimate = infer_layers(spec.layers, input_shape, layers_loc)
    first = spec.layers[0]
    if first.type == "embedding":
        return ModelPlan("int", output, estimate, input_classes=first.num_embeddings)
    return ModelPlan("float", output, estimate)


def build(spec: SequentialSpec, input_shape: Shape) -> nn.Module:
    modules, _ = build_layers(spec.layers, input_shape)
    return SequentialModel(modules)


def layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    assert isinstance(module, SequentialModel)
    return [(f"layers.{i}", layer) for i, layer in enumerate(module.layers)]


SEQUENTIAL_KIND = ModelKind(plan=plan, build=build, layers=layers, build_uses_input_shape=True)
