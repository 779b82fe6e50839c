"""The general path: per-sample gradients by torch.func, for parameters no identity covers.

Each sample's pullback of the model output, g_i = B · J_iᵀ δ_i with δ_i the batch pass's
output gradient for sample i, is `vjp` of `functional_call` under `vmap`, a chunk of samples
at a time. Any loss works (the loss is not re-evaluated), dropout applies the batch pass's
masks, and the model's own hooks must be muted (`mute`): torch.func refuses them.
"""

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap

from service.architectures.modules import SeededDropout
from service.diagnostics.per_sample.parts import Accumulator, Parts, chunk_size
from service.errors import raise_if_cancelled


def vmap_parts(
    module: nn.Module,
    general: Sequence[tuple[str, nn.Parameter]],
    inputs: torch.Tensor,
    output_grad: torch.Tensor | None,
    dropouts: Sequence[SeededDropout],
    masks: Sequence[Sequence[torch.Tensor]],
    dtype: torch.dtype,
    mute: Callable[[], AbstractContextManager[Any]],
    cancel: threading.Event | None = None,
    per_sample_elements: int = 0,
) -> dict[str, Parts]:
    """Parts of the `general` parameters (named as in `module.named_parameters()`).

    `masks`: each dropout's masks of the batch pass, in call order; `per_sample_elements`:
    the activations of one sample, to size the chunks."""
    batch = len(inputs)
    means = {
        name: torch.zeros_like(p, dtype=dtype) if p.grad is None else p.grad.to(dtype)
        for name, p in general
    }
    if output_grad is None:  # the loss does not reach the output: every g_i is zero
        return {name: Parts.zeros(batch, p, dtype) for name, p in general}
    primals = {name: p.detach() for name, p in general}
    others = {n: p.detach() for n, p in module.named_parameters() if n not in primals}
    flat_masks = [mask for calls in masks for mask in calls]
    counts = [len(calls) for calls in masks]
    cotangents = output_grad * batch

    def pullback(x: torch.Tensor, cotangent: torch.Tensor, *sample_masks: torch.Tensor) -> Any:
        replay = iter(sample_masks)
        for dropout, count in zip(dropouts, counts, strict=True):
            dropout.replay = [next(replay) for _ in range(count)]

        def forward(params: dict[str, torch.Tensor]) -> torch.Tensor:
            out: torch.Tensor = functional_call(module, (params, others), (x.unsqueeze(0),))
            return out

        vjp_fn = vjp(forward, primals)[1]
        (grads,) = vjp_fn(cotangent.unsqueeze(0))
        return grads

    accumulators = {name: Accumulator(mean) for name, mean in means.items()}
    parameters = sum(p.numel() for _, p in general)
    step = chunk_size(batch, parameters + per_sample_elements)
    try:
        with mute():
            for start in range(0, batch, step):
                raise_if_cancelled(cancel)
                chunk = slice(start, start + step)
                grads = vmap(pullback)(
                    inputs[chunk], cotangents[chunk], *(m[chunk] for m in flat_masks)
                )
                for name, grad in grads.items():
                    accumulators[name].add(grad.to(dtype))
    finally:
        for dropout in dropouts:
            dropout.replay = []
    return {name: accumulator.parts() for name, accumulator in accumulators.items()}
