"""Seeded initialisation drawn in chunks (so that a build can be cancelled between them) gives
plain PyTorch's weights bit for bit, and stops soon after its event is set."""

import threading
from collections.abc import Callable

import pytest
import torch
from torch import nn

from service.architectures import init
from service.architectures.init import build_seeded
from service.errors import Cancelled


def plain(factory: Callable[[], nn.Module], seed: int) -> tuple[nn.Module, torch.Tensor]:
    """What a user gets: torch.manual_seed, then construction; and the generator after it."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = factory()
        return module, torch.random.get_rng_state()


def assert_same_bits(ours: nn.Module, theirs: nn.Module) -> None:
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32)), name


# Element counts around the chunk boundaries: below two chunks (one call), exactly two, a
# tail shorter than 16 (normal_ redraws one), and odd counts.
FACTORIES = {
    "linear 16x7": lambda: nn.Linear(7, 16),
    "linear 3x11": lambda: nn.Linear(11, 3),
    "linear 5x7": lambda: nn.Linear(7, 5),
    "embedding 33x3": lambda: nn.Embedding(33, 3),
    "embedding 20x5": lambda: nn.Embedding(20, 5),
    "embedding 7x9": lambda: nn.Embedding(7, 9),
    "conv2d": lambda: nn.Conv2d(3, 5, kernel_size=3),
    "stack": lambda: nn.Sequential(nn.Embedding(50, 7), nn.Linear(7, 9), nn.LayerNorm(9)),
}


@pytest.mark.parametrize("chunk", [16, 32, 48])
@pytest.mark.parametrize("name", FACTORIES)
def test_chunked_draws_equal_plain_pytorch(monkeypatch, chunk, name):
    monkeypatch.setattr(init, "DRAW_CHUNK", chunk)
    factory = FACTORIES[name]
    theirs, state = plain(factory, 11)
    ours, generator = build_seeded(factory, 11, cancel=threading.Event())
    assert_same_bits(ours, theirs)
    assert torch.equal(generator.get_state(), state)  # dropout masks continue the same stream


def test_the_real_chunk_size_draws_plain_pytorch_weights():
    # 2 * DRAW_CHUNK + 3 rows of 1 and a Linear twice that: both drawn in chunks.
    rows = 2 * init.DRAW_CHUNK + 3

    def factory() -> nn.Module:
        return nn.Sequential(nn.Embedding(rows, 1), nn.Linear(2, rows))

    theirs, state = plain(factory, 3)
    ours, generator = build_seeded(factory, 3, cancel=threading.Event())
    assert_same_bits(ours, theirs)
    assert torch.equal(generator.get_state(), state)


class SetAfter(threading.Event):
    """An event that reads as set from its `calls`-th check on."""

    def __init__(self, calls: int):
        super().__init__()
        self.calls = calls

    def is_set(self) -> bool:
        self.calls -= 1
        return self.calls < 0 or super().is_set()


def test_a_set_event_stops_the_draw_of_one_large_tensor(monkeypatch):
    monkeypatch.setattr(init, "DRAW_CHUNK", 16)
    module = nn.Linear(10, 100, bias=False)
    nn.init.zeros_(module.weight)
    # Checks: one per submodule (one here), then one before each chunk: 3 chunks drawn.
    with pytest.raises(Cancelled):
        init.initialise(module, torch.Generator().manual_seed(0), cancel=SetAfter(4))
    drawn = module.weight.detach().reshape(-1) != 0
    assert drawn[: 3 * 16].all() and not drawn[3 * 16 :].any()


def test_a_set_event_stops_between_modules():
    seen: list[nn.Module] = []
    cancel = threading.Event()

    def after(sub: nn.Module) -> None:
        seen.append(sub)
        if isinstance(sub, nn.Linear):
            cancel.set()

    module = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(Cancelled):
        init.initialise(module, torch.Generator(), after, cancel)
    assert seen == [module, module[0]]
