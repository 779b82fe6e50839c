"""What the batch pass records for per-sample gradients, with hooks that live for that pass.

For each module with an identity (`identities.RULES`): its input and the gradient that
reaches its output. For the model: the gradient of its output (the vmap path's cotangent).
For each dropout: its masks, in call order (the vmap path replays them).
"""

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from service.architectures.modules import GPTModel, SeededDropout
from service.diagnostics.per_sample.identities import RULES


def _broadcast_sources(module: nn.Module) -> dict[nn.Module, nn.Module]:
    """Modules whose output is shared by the batch, mapped to the module whose output gradient
    is theirs per sample: the GPT's position embedding (positions 0..T-1, one (T, D) output
    added to each sample's token embeddings) and its token embedding."""
    return {m.pos_emb: m.tok_emb for m in module.modules() if isinstance(m, GPTModel)}


@dataclass(frozen=True)
class Tap:
    """A module with parameters of its own, and whether another module holds one of them too
    (then g_i sums both uses: the vmap path's)."""

    module: nn.Module
    params: dict[str, nn.Parameter]
    shared: bool


@dataclass(frozen=True)
class Layout:
    taps: list[Tap]
    sources: dict[nn.Module, nn.Module]


def layout(module: nn.Module) -> Layout:
    """Computed once per model (kept on it: a cached model's structure never changes, and a
    model is lent to one run at a time)."""
    found: Layout | None = getattr(module, "_per_sample_layout", None)
    if found is not None:
        return found
    holders = Counter(id(p) for m in module.modules() for p in m.parameters(recurse=False))
    taps = []
    for m in module.modules():
        params = dict(m.named_parameters(recurse=False))
        if params:
            taps.append(Tap(m, params, any(holders[id(p)] > 1 for p in params.values())))
    found = Layout(taps, _broadcast_sources(module))
    object.__setattr__(module, "_per_sample_layout", found)  # a plain attribute
    return found


class Recorder:
    """Records one batch pass of `module` (hooks only inside `recording()`); `release()` lets go
    of what was recorded."""

    def __init__(self, module: nn.Module, dropouts: Sequence[SeededDropout]):
        self.module = module
        self.dropouts = list(dropouts)
        found = layout(module)
        self.taps = [tap for tap in found.taps if type(tap.module) in RULES]
        self.sources = found.sources
        self.inputs: dict[nn.Module, list[Any]] = {}
        self.grads: dict[nn.Module, torch.Tensor] = {}
        self.output_grad: torch.Tensor | None = None

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        handles = [tap.module.register_forward_hook(self._keep) for tap in self.taps]
        for dropout in self.dropouts:
            dropout.recorded = []
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _keep(self, module: nn.Module, args: Any, output: Any) -> None:
        calls = self.inputs.setdefault(module, [])
        calls.append(args[0] if args else None)
        if len(calls) == 1 and isinstance(output, torch.Tensor) and output.requires_grad:

            def keep_grad(grad: torch.Tensor) -> None:
                self.grads[module] = grad

            output.register_hook(keep_grad)  # type: ignore[no-untyped-call]

    def keep_output(self, output: torch.Tensor) -> None:
        """The model's output: its gradient is the cotangent of every sample's pullback."""
        if output.requires_grad:

            def keep_grad(grad: torch.Tensor) -> None:
                self.output_grad = grad

            output.register_hook(keep_grad)  # type: ignore[no-untyped-call]

    def masks(self) -> list[list[torch.Tensor]]:
        """Each dropout's masks of the pass, in call order."""
        return [list(d.recorded or []) for d in self.dropouts]

    def release(self) -> None:
        self.inputs.clear()
        self.grads.clear()
        self.output_grad = None
        for dropout in self.dropouts:
            dropout.recorded = None
            dropout.replay = []
