"""Seeded initialisation that never touches PyTorch's global random generator.

Modules are created on the `meta` device (no memory, no random draws), materialised on the
CPU, then initialised module by module, in construction order, from a private
`torch.Generator`. The draws are PyTorch's own default initialisations, so the weights are
bit-identical to `torch.manual_seed(seed)` followed by plain construction on the CPU.
"""

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import init


class SeededInit:
    """Mixin for our own modules: reinitialise parameters and buffers from a generator."""

    def reset_seeded(self, generator: torch.Generator) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _linear_like(module: nn.Module, generator: torch.Generator) -> None:
    # nn.Linear / nn.ConvNd.reset_parameters with an explicit generator: the bound of
    # init.kaiming_uniform_(weight, a=√5), computed in its order of operations.
    weight: torch.Tensor = module.weight  # type: ignore[assignment]
    fan_in, _ = init._calculate_fan_in_and_fan_out(weight)
    if weight.numel() > 0:
        std = init.calculate_gain("leaky_relu", math.sqrt(5)) / math.sqrt(fan_in)
        bound = math.sqrt(3.0) * std
        weight.uniform_(-bound, bound, generator=generator)
    bias = getattr(module, "bias", None)
    if bias is not None:
        bias_bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        bias.uniform_(-bias_bound, bias_bound, generator=generator)


def _embedding(module: nn.Module, generator: torch.Generator) -> None:
    assert isinstance(module, nn.Embedding)
    module.weight.normal_(generator=generator)
    module._fill_padding_idx_with_zero()


def _deterministic(module: nn.Module, generator: torch.Generator) -> None:
    # Norm layers draw nothing: ones, zeros and fresh running statistics.
    module.reset_parameters()  # type: ignore[operator]


Initialiser = Callable[[nn.Module, torch.Generator], None]
_INITIALISERS: dict[type[nn.Module], Initialiser] = {
    nn.Linear: _linear_like,
    nn.Conv1d: _linear_like,
    nn.Conv2d: _linear_like,
    nn.Embedding: _embedding,
    nn.LayerNorm: _deterministic,
    nn.RMSNorm: _deterministic,
    nn.BatchNorm1d: _deterministic,
    nn.BatchNorm2d: _deterministic,
}


def _owns_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(
        True for _ in module.buffers(recurse=False)
    )


@torch.no_grad()
def initialise(
    module: nn.Module,
    generator: torch.Generator,
    on_initialised: Callable[[nn.Module], None] | None = None,
) -> None:
    """Initialise every submodule in construction (registration) order; `on_initialised`
    sees each submodule once its own parameters hold their final values."""
    for sub in module.modules():
        if isinstance(sub, SeededInit):
            sub.reset_seeded(generator)
        elif type(sub) in _INITIALISERS:
            _INITIALISERS[type(sub)](sub, generator)
        elif _owns_state(sub):
            raise TypeError(f"no seeded initialiser for {type(sub).__name__}")
        if on_initialised is not None:
            on_initialised(sub)


def build_uninitialised(factory: Callable[[], nn.Module]) -> nn.Module:
    """`factory()` built on the meta device (no memory, no random draws), then given
    uninitialised CPU storage."""
    with torch.device("meta"):
        module = factory()
    return module.to_empty(device="cpu")


def build_seeded(
    factory: Callable[[], nn.Module],
    seed: int,
    on_initialised: Callable[[nn.Module], None] | None = None,
) -> tuple[nn.Module, torch.Generator]:
    """Build `factory()` on the CPU with weights drawn as after `torch.manual_seed(seed)`.

    Returns the module and the generator, positioned where the global generator would be
    after construction (dropout masks drawn later continue the same stream).
    """
    module = build_uninitialised(factory)
    generator = torch.Generator().manual_seed(seed)
    initialise(module, generator, on_initialised)
    return module, generator
