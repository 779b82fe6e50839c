"""The lesson's MLP: `layers` is a ModuleList of Sequential(Linear, activation) blocks."""

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from service.architectures.activations import ACTIVATIONS, make_activation
from service.architectures.base import Estimate, ModelKind, ModelSignature, Shape
from service.architectures.init_schemes import InitUnit
from service.errors import Loc, ShapeMismatch
from service.schemas.models import MLPSpec


class MLP(nn.Module):
    """Built exactly as the course's ExampleDeepNeuralNetwork."""

    def __init__(self, layer_sizes: Sequence[int], activation: str, shortcut: bool, bias: bool):
        super().__init__()
        self.use_shortcut = shortcut
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(n_in, n_out, bias=bias), make_activation(activation))
            for n_in, n_out in pairwise(layer_sizes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            output = layer(x)
            # The shortcut applies only where the block keeps the shape.
            x = x + output if self.use_shortcut and x.shape == output.shape else output
        return x


def signature(spec: MLPSpec, input_shape: Shape, loc: Loc) -> ModelSignature:
    sizes = spec.layer_sizes
    if len(input_shape) < 2:  # the batch dimension comes first: a flat list has none
        fits = bool(input_shape) and input_shape[-1] == sizes[0]
        raise ShapeMismatch.at(
            (*loc, "input"),
            f"input has shape {list(input_shape)}; an mlp takes (batch, {sizes[0]})"
            + (": wrap a single sample as [[...]]" if fits else " (model.layer_sizes[0])"),
        )
    if input_shape[-1] != sizes[0]:
        raise ShapeMismatch.at(
            (*loc, "input"),
            f"input has shape {list(input_shape)}; the mlp expects a last dimension of "
            f"{sizes[0]} (model.layer_sizes[0])",
        )
    rows = math.prod(input_shape[:-1])
    weights = sum(n_in * n_out for n_in, n_out in pairwise(sizes))
    biases = sum(sizes[1:]) if spec.bias else 0
    # Per output element: the linear's output, the block's output (the sum, with a
    # shortcut) and what the activation keeps.
    saved = 2 + ACTIVATIONS[spec.activation].saved
    estimate = Estimate(
        parameters=weights + biases,
        activation_elements=rows * (sizes[0] + saved * sum(sizes[1:])),
        flops=6 * rows * weights,
        layers=len(sizes) - 1,
        output_elements=rows * sum(sizes[1:]),
    )
    return ModelSignature("float", (*input_shape[:-1], sizes[-1]), estimate)


def build(spec: MLPSpec, input_shape: Shape) -> nn.Module:
    return MLP(spec.layer_sizes, spec.activation, spec.shortcut, spec.bias)


def layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    assert isinstance(module, MLP)
    return [(f"layers.{i}", layer) for i, layer in enumerate(module.layers)]


def init_units(spec: MLPSpec, module: nn.Module) -> list[InitUnit]:
    """Each block's linear: the model's `init` only."""
    return [InitUnit(("layers", i), block) for i, (_, block) in enumerate(layers(module))]


MLP_KIND = ModelKind(signature=signature, build=build, layers=layers, init_units=init_units)
