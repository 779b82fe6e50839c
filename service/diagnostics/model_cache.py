"""Initial models: built once per (spec, seed, dtype, device), lent to one run at a time.

A run never changes a parameter (there is no optimiser step), only `.grad` and, in training
mode, normalisation buffers; both are restored after the run. So a repeated request reuses
the module, its weights' hash and its value statistics instead of re-initialising. The
cache is an LRU bounded by bytes.
"""

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from service.architectures.init import build_seeded, build_uninitialised, initialise
from service.architectures.modules import SeededDropout
from service.diagnostics.plan import RunPlan
from service.diagnostics.stats import Statistics
from service.diagnostics.tensors import DTYPES
from service.errors import Cancelled
from service.schemas.reports import Stats

# Parameters summarised on the side thread as they are drawn have more elements than this;
# the rest are summarised in the one call after the draws.
SIDE_STATISTICS_MIN_ELEMENTS = 1 << 12


class ParameterDigest:
    """sha256 over names, shapes, dtypes and raw bytes of parameters, fed in order."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def update(self, name: str, param: torch.Tensor) -> None:
        self._digest.update(f"{name}:{list(param.shape)}:{param.dtype};".encode())
        tensor = param.detach().cpu().contiguous().reshape(-1)
        self._digest.update(tensor.view(torch.uint8).numpy().data)  # releases the GIL

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def hash_parameters(module: nn.Module) -> str:
    """The digest of a module's parameters, in `named_parameters()` order."""
    digest = ParameterDigest()
    for name, param in module.named_parameters():
        digest.update(name, param)
    return digest.hexdigest()


class Capture:
    """What the permanent forward hooks of a model record during one run: each reported
    layer's output, asked to retain the gradient that reaches it. Each hook checks for
    cancellation; with `cancel_points` the backward pass checks again at each output."""

    def __init__(self, layers: int):
        self.outputs: list[torch.Tensor | None] = [None] * layers
        self.cancel: threading.Event | None = None
        self.cancel_points = False

    def start(self, cancel: threading.Event, cancel_points: bool) -> None:
        self.outputs = [None] * len(self.outputs)
        self.cancel, self.cancel_points = cancel, cancel_points

    def clear(self) -> None:
        self.outputs = [None] * len(self.outputs)  # activations are freed with the graph
        self.cancel = None

    def check(self, *_: object) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled

    def hook(self, index: int) -> Callable[[nn.Module, Any, Any], None]:
        def keep_output(module: nn.Module, args: Any, output: Any) -> None:
            self.check()
            tensor = output if isinstance(output, torch.Tensor) else output[0]
            self.outputs[index] = tensor
            if tensor.requires_grad:
                tensor.retain_grad()
                if self.cancel_points:
                    tensor.register_hook(self.check)

        return keep_output


@dataclass
class InitialModel:
    """A module in its initial state, with what is derived from that state once: the hash,
    value statistics, and the structure a run walks (parameters, layers, owners)."""

    key: Hashable
    module: nn.Module
    init_sha256: str
    value_stats: list[Stats]  # per named parameter, in order
    generator_state: torch.Tensor  # the seeded generator right after initialisation
    named_parameters: list[tuple[str, nn.Parameter]]
    layers: list[tuple[str, nn.Module]]  # the reported layers
    owners: list[str | None]  # per named parameter: the reported layer holding it
    dropouts: list[SeededDropout]
    capture: Capture
    buffers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    nbytes: int = 0
    training: bool | None = None

    def prepare(self, training: bool, seed: int, device: str) -> None:
        """Mode and dropout generator for one run: where `torch.manual_seed(seed)` and
        construction on the CPU would have left the generator that nn.Dropout draws from on
        this device (the CPU's, past the initialisation; a GPU's, untouched by it)."""
        if self.training != training:
            self.module.train(training)
            self.training = training
        if torch.device(device).type == "cuda":
            generator = torch.Generator(device).manual_seed(seed)
        else:
            generator = torch.Generator()
            generator.set_state(self.generator_state)
        for dropout in self.dropouts:
            dropout.generator = generator

    def reset(self) -> None:
        """Back to the initial state: no gradients, no activations, buffers as built."""
        self.capture.clear()
        with torch.no_grad():
            for _, param in self.named_parameters:
                param.grad = None
            for live, initial in self.buffers:
                live.copy_(initial)


def _estimated_bytes(plan: RunPlan) -> int:
    return plan.model.estimate.parameters * DTYPES[plan.dtype].itemsize


def cache_key(plan: RunPlan) -> Hashable:
    shape = plan.input_shape[1:] if plan.kind.build_uses_input_shape else ()
    return (plan.request.model.model_dump_json(), shape, plan.request.seed, plan.dtype, plan.device)


def _drawn(
    plan: RunPlan, statistics: Statistics, side: Executor
) -> tuple[nn.Module, torch.Generator, str, list[Stats]]:
    """Draw the weights; hash and summarise each parameter on `side` as soon as it is drawn.

    Drawing is sequential (one generator) and leaves a core idle; hashing and the kernel's
    serial calls release the GIL, so the hash and value statistics are ready about when the
    last weight is. A dtype cast changes the values afterwards: then the cast module is
    hashed and summarised after construction.
    """
    factory = lambda: plan.kind.build(plan.request.model, plan.input_shape)  # noqa: E731
    dtype = DTYPES[plan.dtype]
    if dtype != torch.float32:
        module, generator = build_seeded(factory, plan.request.seed)
        module = module.to(dtype=dtype)
        values = statistics.summarise(list(module.parameters())).stats
        return module, generator, hash_parameters(module), values
    module = build_uninitialised(factory)
    named = list(module.named_parameters())
    names = {id(p): name for name, p in named}
    digest, drawn, rows, pending = ParameterDigest(), [], {}, []

    def summarise_on_side(param: nn.Parameter) -> None:
        row = statistics.side_row(param)
        if row is not None:  # else `summarise` below computes it on this thread
            rows[id(param)] = row

    def on_initialised(sub: nn.Module) -> None:
        for param in sub.parameters(recurse=False):
            drawn.append(id(param))  # twice if drawn again (tied weights): rehashed below
            pending.append(side.submit(digest.update, names[id(param)], param))
            if param.numel() > SIDE_STATISTICS_MIN_ELEMENTS:
                pending.append(side.submit(summarise_on_side, param))

    generator = torch.Generator().manual_seed(plan.request.seed)
    initialise(module, generator, on_initialised)
    for future in pending:
        future.result()  # in order; re-raises what failed on the side
    values = statistics.summarise([p for _, p in named], rows).stats
    if drawn != [id(p) for _, p in named]:  # shared or redrawn: hash the final values
        return module, generator, hash_parameters(module), values
    return module, generator, digest.hexdigest(), values


def build_initial(
    plan: RunPlan, key: Hashable, statistics: Statistics, side: Executor
) -> InitialModel:
    """Seeded construction on the CPU, hashed and summarised there, then moved."""
    module, generator, init_sha256, value_stats = _drawn(plan, statistics, side)
    named = list(module.named_parameters())
    module = module.to(plan.device)
    layers = list(plan.kind.layers(module))
    owner = {id(p): name for name, layer in layers for p in layer.parameters()}
    capture = Capture(len(layers))
    for index, (_, layer) in enumerate(layers):
        layer.register_forward_hook(capture.hook(index))
    return InitialModel(
        key=key,
        module=module,
        init_sha256=init_sha256,
        value_stats=value_stats,
        generator_state=generator.get_state(),
        named_parameters=named,
        layers=layers,
        owners=[owner.get(id(p)) for _, p in named],
        dropouts=[m for m in module.modules() if isinstance(m, SeededDropout)],
        capture=capture,
        buffers=[(b, b.detach().clone()) for b in module.buffers()],
        nbytes=sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]),
    )


class ModelCache:
    """Idle initial models by key, least recently used evicted beyond `max_bytes`."""

    def __init__(self, max_bytes: int, statistics: Statistics, side: Executor):
        self.max_bytes = max_bytes
        self.statistics = statistics
        self._side = side
        self._idle: OrderedDict[int, InitialModel] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def checkout(self, plan: RunPlan) -> InitialModel:
        """An idle model for this plan if one is cached (removed from the cache while
        lent), else a new one."""
        key = cache_key(plan)
        with self._lock:
            for token, model in self._idle.items():
                if model.key == key:
                    del self._idle[token]
                    self.hits += 1
                    break
            else:
                model = None
                self.misses += 1
        if model is None:
            self._make_room(_estimated_bytes(plan))
            model = build_initial(plan, key, self.statistics, self._side)
        model.prepare(plan.request.mode == "train", plan.request.seed, plan.device)
        return model

    def checkin(self, model: InitialModel) -> None:
        """Reset the model and keep it, unless it alone exceeds the budget."""
        model.reset()
        if model.nbytes > self.max_bytes:
            return
        with self._lock:
            self._idle[id(model)] = model
            self._evict(0)

    def _make_room(self, incoming: int) -> None:
        """Evict before building, so that the cache and the model being built together stay
        within the budget (evicting after would hold both at the peak)."""
        with self._lock:
            self._evict(incoming)

    def _evict(self, incoming: int) -> None:
        """Least recently used first, until `incoming` more bytes fit; under the lock."""
        held = sum(m.nbytes for m in self._idle.values())
        while self._idle and held + incoming > self.max_bytes:
            held -= self._idle.popitem(last=False)[1].nbytes

    @property
    def idle_bytes(self) -> int:
        with self._lock:
            return sum(m.nbytes for m in self._idle.values())
