"""Per-sample gradient Parts of every parameter: identities where they apply, vmap elsewhere.

An identity applies to a module with a rule (`identities.RULES`) that ran once in the pass,
whose parameters it alone holds, and whose input and output gradient carry the batch first.
"""

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from service.diagnostics.per_sample.identities import RULES
from service.diagnostics.per_sample.parts import Parts, work_dtype
from service.diagnostics.per_sample.recorder import Recorder, Tap
from service.diagnostics.per_sample.vmap import vmap_parts
from service.errors import raise_if_cancelled


def _identity(recorder: Recorder, tap: Tap, batch: int, dtype: torch.dtype) -> Any:
    module, own = tap.module, tap.params
    calls = recorder.inputs.get(module, [])
    if not calls:  # not run: nothing reached its parameters
        return {name: Parts.zeros(batch, p, dtype) for name, p in own.items()}
    if len(calls) > 1 or not isinstance(calls[0], torch.Tensor):
        return None
    source = recorder.sources.get(module)
    a = calls[0] if source is None else calls[0].expand(batch, *calls[0].shape)
    d = recorder.grads.get(module if source is None else source)
    if d is None:  # the loss does not depend on its output
        return {name: Parts.zeros(batch, p, dtype) for name, p in own.items()}
    if a.dim() == 0 or a.shape[0] != batch or d.dim() == 0 or d.shape[0] != batch:
        return None
    a = a.to(dtype) if a.is_floating_point() else a
    return RULES[type(module)](module, a, d.to(dtype) * batch, batch)


def per_sample_parts(
    recorder: Recorder,
    named: Sequence[tuple[str, nn.Parameter]],
    inputs: torch.Tensor,
    mute: Callable[[], AbstractContextManager[Any]],
    cancel: threading.Event | None = None,
    per_sample_elements: int = 0,
) -> tuple[list[Parts], list[str]]:
    """Parts per named parameter, in order, and the names of those the vmap path computed."""
    batch = len(inputs)
    dtype = work_dtype(named[0][1].dtype if named else torch.float32)
    parts: dict[int, Parts] = {}
    with torch.no_grad():
        for tap in recorder.taps:
            raise_if_cancelled(cancel)
            found = None if tap.shared else _identity(recorder, tap, batch, dtype)
            if found is not None:
                parts.update({id(p): found[name] for name, p in tap.params.items()})
    general = [(name, p) for name, p in named if id(p) not in parts]
    if general:
        computed = vmap_parts(
            recorder.module,
            general,
            inputs,
            recorder.output_grad,
            recorder.dropouts,
            recorder.masks(),
            dtype,
            mute,
            cancel,
            per_sample_elements,
        )
        parts.update({id(p): computed[name] for name, p in general})
    return [parts[id(p)] for _, p in named], [name for name, _ in general]
