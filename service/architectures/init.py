"""Seeded initialisation that never touches PyTorch's global random generator.

Modules are created on the `meta` device (no memory, no random draws), materialised on the
CPU, then initialised module by module, in construction order, from a private
`torch.Generator`. The draws are PyTorch's own default initialisations, so the weights are
bit-identical to `torch.manual_seed(seed)` followed by plain construction on the CPU.

A build can be cancelled: `initialise` checks its event before each submodule and between
the chunks of a large tensor's draw (docs/performance.md, "Cancelling a build").
"""

import functools
import math
import threading
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import init

from service.errors import raise_if_cancelled

# Elements drawn between two cancellation checks: a multiple of 16, since normal_ transforms
# blocks of 16 drawn numbers, so that chunks draw exactly what one call would.
DRAW_CHUNK = 1 << 22

Check = Callable[[], None]  # raises Cancelled once the build is cancelled


def _chunked(tensor: torch.Tensor, draw: Callable[[torch.Tensor], object], check: Check) -> None:
    """`draw(tensor)` in consecutive chunks, `check()` before each. Chunks of a contiguous
    tensor draw the same numbers as one call (tests/test_init.py); the last chunk takes the
    tail, so that no chunk is shorter than `DRAW_CHUNK` (normal_ redraws a tail of < 16)."""
    total = tensor.numel()
    if total < 2 * DRAW_CHUNK or not tensor.is_contiguous():
        check()
        draw(tensor)
        return
    flat, start = tensor.view(-1), 0
    while start < total:
        stop = total if total - start < 2 * DRAW_CHUNK else start + DRAW_CHUNK
        check()
        draw(flat[start:stop])
        start = stop


class SeededInit:
    """Mixin for our own modules: reinitialise parameters and buffers from a generator."""

    def reset_seeded(self, generator: torch.Generator) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _linear_like(module: nn.Module, generator: torch.Generator, check: Check) -> None:
    # nn.Linear / nn.ConvNd.reset_parameters with an explicit generator: the bound of
    # init.kaiming_uniform_(weight, a=√5), computed in its order of operations.
    weight: torch.Tensor = module.weight  # type: ignore[assignment]
    fan_in, _ = init._calculate_fan_in_and_fan_out(weight)
    if weight.numel() > 0:
        std = init.calculate_gain("leaky_relu", math.sqrt(5)) / math.sqrt(fan_in)
        bound = math.sqrt(3.0) * std
        _chunked(weight, lambda t: t.uniform_(-bound, bound, generator=generator), check)
    bias = getattr(module, "bias", None)
    if bias is not None:
        bias_bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        bias.uniform_(-bias_bound, bias_bound, generator=generator)


def _embedding(module: nn.Module, generator: torch.Generator, check: Check) -> None:
    assert isinstance(module, nn.Embedding)
    _chunked(module.weight, lambda t: t.normal_(generator=generator), check)
    module._fill_padding_idx_with_zero()


def _deterministic(module: nn.Module, generator: torch.Generator, check: Check) -> None:
    # Norm layers draw nothing: ones, zeros and fresh running statistics.
    module.reset_parameters()  # type: ignore[operator]


def _recurrent(module: nn.Module, generator: torch.Generator, check: Check) -> None:
    # RNNBase.reset_parameters: uniform(-1/√hidden, 1/√hidden) over its parameters in order.
    assert isinstance(module, nn.RNNBase)
    stdv = 1.0 / math.sqrt(module.hidden_size) if module.hidden_size > 0 else 0
    for weight in module.parameters():
        _chunked(weight, lambda t: t.uniform_(-stdv, stdv, generator=generator), check)


Initialiser = Callable[[nn.Module, torch.Generator, Check], None]
_INITIALISERS: dict[type[nn.Module], Initialiser] = {
    nn.Linear: _linear_like,
    nn.Conv1d: _linear_like,
    nn.Conv2d: _linear_like,
    # Transposed: fan_in from the weight (in, out/groups, k...) as _ConvNd computes it.
    nn.ConvTranspose1d: _linear_like,
    nn.ConvTranspose2d: _linear_like,
    nn.Embedding: _embedding,
    nn.LayerNorm: _deterministic,
    nn.RMSNorm: _deterministic,
    nn.BatchNorm1d: _deterministic,
    nn.BatchNorm2d: _deterministic,
    nn.GroupNorm: _deterministic,
    nn.InstanceNorm1d: _deterministic,
    nn.InstanceNorm2d: _deterministic,
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
    cancel: threading.Event | None = None,
) -> None:
    """Initialise every submodule in construction (registration) order; `on_initialised`
    sees each submodule once its own parameters hold their final values. Raises Cancelled
    soon after `cancel` is set."""
    check = functools.partial(raise_if_cancelled, cancel)
    for sub in module.modules():
        check()
        if isinstance(sub, SeededInit):
            sub.reset_seeded(generator)
        elif type(sub) in _INITIALISERS:
            _INITIALISERS[type(sub)](sub, generator, check)
        elif isinstance(sub, nn.RNNBase):  # nn.RNN/LSTM/GRU and ours, which subclass them
            _recurrent(sub, generator, check)
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
    cancel: threading.Event | None = None,
) -> tuple[nn.Module, torch.Generator]:
    """Build `factory()` on the CPU with weights drawn as after `torch.manual_seed(seed)`.

    Returns the module and the generator, positioned where the global generator would be
    after construction (dropout masks drawn later continue the same stream).
    """
    module = build_uninitialised(factory)
    generator = torch.Generator().manual_seed(seed)
    initialise(module, generator, on_initialised, cancel)
    return module, generator
