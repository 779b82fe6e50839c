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


Fill = Callable[[torch.Tensor], object]
Draw = Callable[[torch.Tensor, Fill], None]  # (parameter, how to fill a part of it)


def draw_whole(tensor: torch.Tensor, fill: Fill) -> None:
    fill(tensor)


# Elements drawn at a time by `draw_in_chunks` (a multiple of 16, see there).
DRAW_CHUNK = 1 << 22


def draw_in_chunks(on_chunk: Callable[[torch.Tensor, torch.Tensor], None]) -> Draw:
    """A `Draw` that fills a tensor DRAW_CHUNK elements at a time and hands each part to
    `on_chunk(tensor, part)` as soon as it holds its values, so that work on the values can
    start before the draw of a large tensor ends.

    The values are those of one whole draw: `uniform_` takes one number from the generator
    per element, in order; `normal_` fills blocks of 16 and redraws the last 16 elements of
    a tensor whose size is not a multiple of 16, so chunks start at multiples of 16 and the
    last one is kept at 16 elements or more (tests/test_parity_architectures.py checks both).
    """

    def draw(tensor: torch.Tensor, fill: Fill) -> None:
        flat = tensor.detach().view(-1)
        starts = list(range(0, flat.numel(), DRAW_CHUNK)) or [0]
        if len(starts) > 1 and flat.numel() - starts[-1] < 16:
            starts.pop()
        for start, end in zip(starts, [*starts[1:], flat.numel()], strict=True):
            part = flat[start:end]
            fill(part)
            on_chunk(tensor, part)

    return draw


def _linear_like(module: nn.Module, generator: torch.Generator, draw: Draw) -> None:
    # nn.Linear / nn.ConvNd.reset_parameters with an explicit generator: the bound of
    # init.kaiming_uniform_(weight, a=√5), computed in its order of operations.
    weight: torch.Tensor = module.weight  # type: ignore[assignment]
    fan_in, _ = init._calculate_fan_in_and_fan_out(weight)
    if weight.numel() > 0:
        std = init.calculate_gain("leaky_relu", math.sqrt(5)) / math.sqrt(fan_in)
        bound = math.sqrt(3.0) * std
        draw(weight, lambda part: part.uniform_(-bound, bound, generator=generator))
    bias = getattr(module, "bias", None)
    if bias is not None:
        bias_bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        draw(bias, lambda part: part.uniform_(-bias_bound, bias_bound, generator=generator))


def _embedding(module: nn.Module, generator: torch.Generator, draw: Draw) -> None:
    assert isinstance(module, nn.Embedding)
    draw(module.weight, lambda part: part.normal_(generator=generator))
    module._fill_padding_idx_with_zero()


def _deterministic(module: nn.Module, generator: torch.Generator, draw: Draw) -> None:
    # Norm layers draw nothing: ones, zeros and fresh running statistics.
    module.reset_parameters()  # type: ignore[operator]


Initialiser = Callable[[nn.Module, torch.Generator, Draw], None]
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
    draw: Draw = draw_whole,
) -> None:
    """Initialise every submodule in construction (registration) order; `on_initialised`
    sees each submodule once its own parameters hold their final values; `draw` fills the
    parameters that are drawn at random (see `draw_in_chunks`)."""
    for sub in module.modules():
        if isinstance(sub, SeededInit):
            sub.reset_seeded(generator)
        elif type(sub) in _INITIALISERS:
            _INITIALISERS[type(sub)](sub, generator, draw)
        elif _owns_state(sub):
            raise TypeError(f"no seeded initialiser for {type(sub).__name__}")
        if on_initialised is not None:
            on_initialised(sub)


def materialise(factory: Callable[[], nn.Module]) -> nn.Module:
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
    module = materialise(factory)
    generator = torch.Generator().manual_seed(seed)
    initialise(module, generator, on_initialised)
    return module, generator
