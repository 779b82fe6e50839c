"""The checks behind `spec_from_module`: what the module computes on the example input, and
whether the grammar's modules, given the module's own tensors, compute the same."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import TypeAdapter, ValidationError
from torch import nn

from service.architectures.init import build_uninitialised
from service.errors import GradiagError
from service.schemas.layers import LayerSpec

LAYER_SPEC: TypeAdapter[Any] = TypeAdapter(LayerSpec)


class UnsupportedModule(ValueError):
    """A module the grammar cannot express; the message starts with its path in the module."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path or '<module>'}: {why}")
        self.path = path


def describe(module: nn.Module) -> str:
    """`nn.Linear` for PyTorch's classes, the class's own name otherwise."""
    cls = type(module)
    return f"nn.{cls.__name__}" if cls.__module__.startswith("torch.nn") else cls.__name__


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def is_torch_class(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.")


def own_tensors(module: nn.Module) -> list[str]:
    """Names of the parameters and buffers a module holds itself (not its children's)."""
    params = [n for n, _ in module.named_parameters(recurse=False)]
    return params + [n for n, _ in module.named_buffers(recurse=False)]


def validation_summary(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())


@dataclass(frozen=True)
class Trace:
    """One eval-mode forward pass of the module on the example input."""

    # id(submodule) -> (first input, output) of its first call; the root and every module
    # that is not PyTorch's own (their forward is what the checks need to see)
    calls: dict[int, tuple[torch.Tensor, torch.Tensor]]
    tensors: dict[str, torch.Tensor]  # the module's parameters and buffers by full name
    parameters: frozenset[str]
    dtype: torch.dtype
    # Why the pass gave no tensor; converting goes on, so that a module the grammar lacks
    # (the likely cause) is named rather than the symptom.
    failure: str | None

    def entry(self, module: nn.Module, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The module's recorded call; refuses when there is none."""
        found = self.calls.get(id(module))
        if found is None and self.failure is not None:
            raise UnsupportedModule("", self.failure)
        if found is None:
            raise UnsupportedModule(path, f"{describe(module)} is not called on example_input")
        return found

    def called(self, module: nn.Module) -> bool:
        return id(module) in self.calls


def _refuse_shared(module: nn.Module) -> None:
    seen: dict[int, str] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            raise UnsupportedModule(
                name, f"is the same tensor as {seen[id(param)]}: the grammar has no tied weights"
            )
        seen[id(param)] = name


def _dtype(module: nn.Module, example_input: torch.Tensor) -> torch.dtype:
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return example_input.dtype if example_input.is_floating_point() else torch.float32


def record(module: nn.Module, example_input: torch.Tensor) -> Trace:
    """Run `module(example_input)` in eval mode, without gradients, and keep what the checks
    need; the module's training flags are restored and its hooks removed."""
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a tensor, not {type(example_input).__name__}")
    _refuse_shared(module)
    calls: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    counts: dict[int, int] = {}

    def hook(sub: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        counts[id(sub)] = counts.get(id(sub), 0) + 1
        wanted = (sub is module or not is_torch_class(sub)) and id(sub) not in calls
        first = args[0] if args else None
        if wanted and isinstance(first, torch.Tensor) and isinstance(output, torch.Tensor):
            # Copies: an in-place activation later in the pass would change them.
            calls[id(sub)] = (first.clone(), output.clone())

    modes = [(sub, sub.training) for sub in module.modules()]
    handles = [sub.register_forward_hook(hook) for sub in module.modules()]
    failure = None
    try:
        module.eval()
        with torch.no_grad():
            output = module(example_input)
        if not isinstance(output, torch.Tensor):
            failure = f"returns a {type(output).__name__}, not a tensor"
    except Exception as error:  # reported once no submodule is known to be the cause
        failure = f"fails on example_input: {error!r}"
    finally:
        for handle in handles:
            handle.remove()
        for sub, training in modes:
            sub.training = training  # not .train(): that would recurse into children
    for name, sub in module.named_modules():
        if counts.get(id(sub), 0) > 1 and any(True for _ in sub.parameters(recurse=False)):
            raise UnsupportedModule(
                name, f"is called {counts[id(sub)]} times: the grammar has no shared weights"
            )
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    parameters = frozenset(n for n, _ in module.named_parameters())
    return Trace(calls, tensors, parameters, _dtype(module, example_input), failure)


def mismatch(
    factory: Callable[[], nn.Module],
    names: Mapping[str, str],
    trace: Trace,
    entry: tuple[torch.Tensor, torch.Tensor],
) -> str | None:
    """None when `factory()`, holding the module's tensors as `names` pairs them (the built
    module's name -> the module's), maps the entry's input to its output; else why not."""
    x, y = entry
    try:
        built = build_uninitialised(factory).to(device=x.device, dtype=trace.dtype)
    except GradiagError as error:  # a shape rule refused the layers on this input
        return error.detail
    state = dict(built.named_parameters()) | dict(built.named_buffers())
    unpaired = set(state) ^ set(names)
    if unpaired:  # a converter's bug, not the user's: say it plainly
        raise AssertionError(f"tensors without a pair: {sorted(unpaired)}")
    with torch.no_grad():
        for ours, theirs in names.items():
            if state[ours].shape != trace.tensors[theirs].shape:
                have, want = list(trace.tensors[theirs].shape), list(state[ours].shape)
                return f"{theirs} has shape {have} where the grammar's layer has {want}"
            state[ours].copy_(trace.tensors[theirs])
        built.eval()
        try:
            out = built(x)
        except Exception as error:
            return f"the grammar's modules fail on its input: {error!r}"
    if out.shape != y.shape:
        return f"output shape {list(out.shape)} instead of {list(y.shape)}"
    difference = (out.double() - y.double()).abs().max().item() if y.numel() else 0.0
    rel = 1e-2 if trace.dtype.itemsize <= 2 else 1e-4  # half precision rounds at 3 digits
    if difference <= rel * y.double().abs().max().item() + 1e-6:
        return None
    return f"outputs differ by up to {difference:.3g}"
