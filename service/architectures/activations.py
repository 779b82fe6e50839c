"""The activation registry: one name, one module factory."""

import math
from collections.abc import Callable

import torch
from torch import nn

# The lesson's constant, torch.sqrt(torch.tensor(2.0 / torch.pi)), is computed in float32;
# keeping that float32 value (exactly representable as a Python float) reproduces its digits.
_SQRT_2_OVER_PI = float(torch.sqrt(torch.tensor(2.0 / math.pi)))


class GELUTanh(nn.Module):
    """GELU in the tanh form of the course: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * torch.pow(x, 3))))


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu_tanh": GELUTanh,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for a registered name."""
    return ACTIVATIONS[name]()
