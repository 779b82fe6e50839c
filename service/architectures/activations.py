"""The activation registry: one name, one module factory and what it keeps for backward."""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

# The lesson's constant, torch.sqrt(torch.tensor(2.0 / torch.pi)), is computed in float32;
# keeping that float32 value (exactly representable as a Python float) reproduces its digits.
_SQRT_2_OVER_PI = float(torch.sqrt(torch.tensor(2.0 / math.pi)))


class GELUTanh(nn.Module):
    """GELU in the tanh form of the course: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).

    float32 and bfloat16 use PyTorch's fused kernel of this very formula (one op forward and
    backward instead of eight): it agrees with the course's expression to the last bit or
    two (the lesson's gradients to 3e-7 relative) at a fraction of the cost. float64 keeps
    the course's expression, whose float32-rounded √(2/π) differs from the kernel's exact
    constant by 7e-9, well above float64 rounding.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float64:
            return F.gelu(x, approximate="tanh")
        return 0.5 * x * (1 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * torch.pow(x, 3))))


@dataclass(frozen=True)
class Activation:
    # The module's class or factory; a layer spec's options (negative_slope, alpha, beta,
    # threshold: `schemas.layers.ACTIVATION_OPTIONS`) are its keyword arguments.
    make: Callable[..., nn.Module]
    # Elements kept for the backward pass per output element, the most over the dtypes
    # (measured with saved_tensors_hooks: tests/test_estimates.py): one (the input or the
    # output) for most.
    saved: int = 1
    # Whether the output is new memory (identity returns its input).
    new_output: bool = True


ACTIVATIONS: dict[str, Activation] = {
    # float64 runs the course's expression, which keeps four; the fused kernel of the other
    # dtypes keeps one. Estimates take four: float32 models are refused somewhat early.
    "gelu_tanh": Activation(GELUTanh, saved=4),
    "gelu": Activation(nn.GELU),
    "relu": Activation(nn.ReLU),
    "leaky_relu": Activation(nn.LeakyReLU),
    "elu": Activation(nn.ELU),
    "tanh": Activation(nn.Tanh),
    "sigmoid": Activation(nn.Sigmoid),
    "silu": Activation(nn.SiLU),
    "softplus": Activation(nn.Softplus),
    "identity": Activation(nn.Identity, saved=0, new_output=False),
}


def make_activation(name: str, **options: float) -> nn.Module:
    """A fresh activation module for a registered name, PyTorch's defaults for the options
    not given."""
    return ACTIVATIONS[name].make(**options)
