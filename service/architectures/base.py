"""What every model kind provides: shape inference with budget estimates, and a builder."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from service.architectures.init_schemes import InitUnit, no_units
from service.errors import Loc

Shape = tuple[int, ...]
InputKind = Literal["float", "int"]


@dataclass(frozen=True)
class Estimate:
    """Costs predicted from a spec and an input shape, before anything is allocated."""

    parameters: int = 0
    activation_elements: int = 0  # saved for the backward pass
    flops: int = 0
    layers: int = 0
    output_elements: int = 0  # of the layers' outputs, whose gradients a run retains
    workspace_elements: int = 0  # the largest transient of any one layer (im2col, scores)

    def __add__(self, other: "Estimate") -> "Estimate":
        return Estimate(
            self.parameters + other.parameters,
            self.activation_elements + other.activation_elements,
            self.flops + other.flops,
            self.layers + other.layers,
            self.output_elements + other.output_elements,
            max(self.workspace_elements, other.workspace_elements),
        )

    def __mul__(self, times: int) -> "Estimate":
        """`times` such layers one after the other."""
        return Estimate(
            self.parameters * times,
            self.activation_elements * times,
            self.flops * times,
            self.layers * times,
            self.output_elements * times,
            self.workspace_elements,
        )


@dataclass(frozen=True)
class ModelSignature:
    """A spec checked against its input: what it takes, what it gives, what it costs."""

    input_kind: InputKind
    output_shape: Shape
    estimate: Estimate
    input_classes: int | None = None  # token ids must lie in [0, input_classes)
    # cross_entropy's classes: dimension 1 of (N, C, d1, ...) as in PyTorch; -1: last, the
    # leading dimensions flattened (the course's (B, T, V) logits)
    class_dim: int = 1


@dataclass(frozen=True)
class ModelKind:
    """One registry entry: everything the service needs to know about a `model.kind`."""

    # (spec, input shape, location of the request) -> signature; raises ShapeMismatch
    signature: Callable[[Any, Shape, Loc], ModelSignature]
    # (spec, input shape) -> module; called under `torch.device("meta")`: no random draws
    build: Callable[[Any, Shape], nn.Module]
    # module -> the (name, module) pairs reported as layers
    layers: Callable[[nn.Module], Sequence[tuple[str, nn.Module]]]
    # whether the module depends on the input's non-batch dimensions (inferred sizes)
    build_uses_input_shape: bool = False
    # (spec, module) -> its layers in spec order, for `init` (architectures/init_schemes.py)
    init_units: Callable[[Any, nn.Module], Sequence[InitUnit]] = no_units
