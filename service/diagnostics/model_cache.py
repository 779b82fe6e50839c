"""Initial models: built once per (spec, seed, dtype, device), lent to one run at a time.

A run never changes a parameter (there is no optimiser step), only `.grad` and, in training
mode, normalisation buffers; both are restored after the run. So a repeated request reuses
the module, its weights' hash and its value statistics instead of re-initialising. The
cache is an LRU by key, bounded by the entries' measured footprint and by their number;
lookup, check-in and each eviction cost O(1).
"""

import contextlib
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from service.architectures.init import build_uninitialised, initialise
from service.architectures.init_schemes import apply_draws, init_draws
from service.architectures.modules import SeededDropout
from service.diagnostics.plan import RunPlan
from service.diagnostics.stats import Statistics
from service.diagnostics.tensors import DTYPES
from service.errors import Cancelled, raise_if_cancelled
from service.schemas.reports import Stats

# Parameters summarised on the side thread as they are drawn have more elements than this;
# the rest are summarised in the one call after the draws.
SIDE_STATISTICS_MIN_ELEMENTS = 1 << 12

# Bytes hashed between two cancellation checks (a few ms of sha256).
HASH_CHUNK = 1 << 24

# What an idle entry holds beyond its tensors' data, in process memory (RSS): once per entry
# (the InitialModel, its lists, its capture), per module (an nn.Module's dicts), per tensor
# (the Tensor, its storage, its value statistics) and per reported layer (its hook). Fitted
# to CPython 3.11 and torch 2.13, rounded up (docs/performance.md, "Model cache").
ENTRY_OVERHEAD = 1024
MODULE_OVERHEAD = 3072
TENSOR_OVERHEAD = 1024
LAYER_OVERHEAD = 256


class ParameterDigest:
    """sha256 over names, shapes, dtypes and raw bytes of parameters, fed in order."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def update(self, name: str, param: torch.Tensor, cancel: threading.Event | None = None) -> None:
        """Feed one parameter, checking `cancel` between chunks of its bytes."""
        self._digest.update(f"{name}:{list(param.shape)}:{param.dtype};".encode())
        tensor = param.detach().cpu().contiguous().reshape(-1)
        data = tensor.view(torch.uint8).numpy().data
        for start in range(0, len(data), HASH_CHUNK):
            raise_if_cancelled(cancel)
            self._digest.update(data[start : start + HASH_CHUNK])  # releases the GIL

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def hash_parameters(module: nn.Module, cancel: threading.Event | None = None) -> str:
    """The digest of a module's parameters, in `named_parameters()` order."""
    digest = ParameterDigest()
    for name, param in module.named_parameters():
        digest.update(name, param, cancel)
    return digest.hexdigest()


class Capture:
    """What the permanent forward hooks of a model record during one run: each reported
    layer's output, asked to retain the gradient that reaches it. Each hook checks for
    cancellation; with `cancel_points` the backward pass checks again at each output."""

    def __init__(self, layers: int):
        self.outputs: list[torch.Tensor | None] = [None] * layers
        self.cancel: threading.Event | None = None
        self.cancel_points = False
        self.muted = False

    def start(self, cancel: threading.Event, cancel_points: bool) -> None:
        self.outputs = [None] * len(self.outputs)
        self.cancel, self.cancel_points = cancel, cancel_points

    def clear(self) -> None:
        self.outputs = [None] * len(self.outputs)  # activations are freed with the graph
        self.cancel = None

    def check(self, *_: object) -> None:
        raise_if_cancelled(self.cancel)

    @contextlib.contextmanager
    def mute(self) -> Iterator[None]:
        """Passes beyond the run's own (curvature, the precision check, per-sample vmap, which
        refuses retain_grad) record nothing and retain no gradient: the outputs stay those
        of the batch pass. Still cancellable."""
        self.muted = True
        try:
            yield
        finally:
            self.muted = False

    def hook(self, index: int) -> Callable[[nn.Module, Any, Any], None]:
        def keep_output(module: nn.Module, args: Any, output: Any) -> None:
            self.check()
            if self.muted:
                return
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

    key: bytes
    module: nn.Module
    init_sha256: str
    value_stats: list[Stats]  # per named parameter, in order
    generator_state: torch.Tensor | None  # the generator after initialisation, for dropout
    named_parameters: list[tuple[str, nn.Parameter]]
    layers: list[tuple[str, nn.Module]]  # the reported layers
    owners: list[str | None]  # per named parameter: the reported layer holding it
    dropouts: list[SeededDropout]
    capture: Capture
    buffers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    nbytes: int = 0
    training: bool | None = None
    dropout_start: torch.Tensor | None = None  # the dropout generator's state at the run's start

    def prepare(self, training: bool, seed: int, device: str) -> None:
        """Mode and dropout generator for one run: where `torch.manual_seed(seed)` and
        construction on the CPU would have left the generator that nn.Dropout draws from on
        this device (the CPU's, past the initialisation; a GPU's, untouched by it)."""
        if self.training != training:
            self.module.train(training)
            self.training = training
        if not self.dropouts:
            return
        if torch.device(device).type == "cuda":
            generator = torch.Generator(device).manual_seed(seed)
        else:
            assert self.generator_state is not None
            generator = torch.Generator()
            generator.set_state(self.generator_state)
        for dropout in self.dropouts:
            dropout.generator = generator
        self.dropout_start = generator.get_state()

    def rewind_dropout(self) -> None:
        """The dropout generator back to where the run's forward pass began: the next pass
        over the batch draws the batch pass's masks (curvature, the precision check)."""
        generator = self.dropouts[0].generator if self.dropouts else None
        if generator is not None and self.dropout_start is not None:
            generator.set_state(self.dropout_start)

    def reset(self) -> None:
        """Back to the initial state: no gradients, no activations, buffers as built."""
        self.capture.clear()
        for dropout in self.dropouts:  # masks kept or replayed for per-sample gradients
            dropout.recorded, dropout.replay = None, []
        with torch.no_grad():
            for _, param in self.named_parameters:
                param.grad = None
            for live, initial in self.buffers:
                live.copy_(initial)


def _estimated_bytes(plan: RunPlan) -> int:
    """A lower bound of the footprint before the build: the parameters and the entry."""
    return plan.model.estimate.parameters * DTYPES[plan.dtype].itemsize + ENTRY_OVERHEAD


def footprint(
    module: nn.Module, layers: int, buffers: list[tuple[torch.Tensor, torch.Tensor]]
) -> int:
    """The bytes an idle entry holds: its tensors' data (buffers twice: live and initial)
    and the measured overheads of its Python objects."""
    params = list(module.parameters())
    modules = sum(1 for _ in module.modules())
    tensors = [*params, *(t for pair in buffers for t in pair)]
    data = sum(t.numel() * t.element_size() for t in tensors)
    return (
        data
        + ENTRY_OVERHEAD
        + MODULE_OVERHEAD * modules
        + TENSOR_OVERHEAD * len(tensors)
        + LAYER_OVERHEAD * layers
    )


def cache_key(plan: RunPlan) -> bytes:
    """A digest of everything the initial model depends on: 32 bytes whatever the spec's size
    (a 256-bit digest, so distinct specs never share a key in practice)."""
    shape = plan.input_shape[1:] if plan.kind.build_uses_input_shape else ()
    what = (plan.request.model.model_dump_json(), shape, plan.request.seed, plan.dtype, plan.device)
    return hashlib.blake2b(repr(what).encode(), digest_size=32).digest()


def _drawn(
    plan: RunPlan, statistics: Statistics, side: Executor, cancel: threading.Event
) -> tuple[nn.Module, torch.Generator, str, list[Stats]]:
    """Draw the weights; hash and summarise each parameter on `side` as soon as it is drawn.

    Drawing is sequential (one generator) and leaves a core idle; hashing and the kernel's
    serial calls release the GIL, so the hash and value statistics are ready about when the
    last weight is. A dtype cast, or a request's `init` redrawing after the defaults, changes
    the values afterwards: then the module is hashed and summarised once it is final.
    Cancelled between draws and hashed chunks.
    """
    factory = lambda: plan.kind.build(plan.request.model, plan.input_shape)  # noqa: E731
    dtype = DTYPES[plan.dtype]
    module = build_uninitialised(factory)
    draws = init_draws(plan.kind, plan.request.model, module)
    if dtype != torch.float32 or draws:
        generator = torch.Generator().manual_seed(plan.request.seed)
        initialise(module, generator, cancel=cancel)
        apply_draws(draws, generator, cancel)
        raise_if_cancelled(cancel)
        module = module.to(dtype=dtype)
        values = statistics.summarise(list(module.parameters())).stats
        return module, generator, hash_parameters(module, cancel), values
    named = list(module.named_parameters())
    names = {id(p): name for name, p in named}
    digest, drawn, rows = ParameterDigest(), [], {}
    pending: list[Future[None]] = []

    def summarise_on_side(param: nn.Parameter) -> None:
        row = statistics.side_row(param)
        if row is not None:  # else `summarise` below computes it on this thread
            rows[id(param)] = row

    def on_initialised(sub: nn.Module) -> None:
        for param in sub.parameters(recurse=False):
            drawn.append(id(param))  # twice if drawn again (tied weights): rehashed below
            pending.append(side.submit(digest.update, names[id(param)], param, cancel))
            if param.numel() > SIDE_STATISTICS_MIN_ELEMENTS:
                pending.append(side.submit(summarise_on_side, param))

    generator = torch.Generator().manual_seed(plan.request.seed)
    try:
        initialise(module, generator, on_initialised, cancel)
        for future in pending:
            future.result()  # in order; re-raises what failed on the side
    except Cancelled:
        for future in pending:  # the side thread is shared: leave it nothing of this build
            future.cancel()
        raise
    values = statistics.summarise([p for _, p in named], rows).stats
    if drawn != [id(p) for _, p in named]:  # shared or redrawn: hash the final values
        return module, generator, hash_parameters(module, cancel), values
    return module, generator, digest.hexdigest(), values


def _free_elsewhere(exc: BaseException) -> None:
    """Drop `exc`'s traceback, whose frames hold a half-built model, on a thread of its own:
    freeing a large model takes a while the run's slot need not wait (docs/performance.md)."""
    frames = [exc.__traceback__]
    exc.__traceback__ = None
    threading.Thread(target=frames.clear, name="gradiag-free").start()  # exit waits for it


def build_initial(
    plan: RunPlan, key: bytes, statistics: Statistics, side: Executor, cancel: threading.Event
) -> InitialModel:
    """Seeded construction on the CPU, hashed and summarised there, then moved."""
    module, generator, init_sha256, value_stats = _drawn(plan, statistics, side, cancel)
    named = list(module.named_parameters())
    raise_if_cancelled(cancel)
    module = module.to(plan.device)
    layers = list(plan.kind.layers(module))
    owner = {id(p): name for name, layer in layers for p in layer.parameters()}
    capture = Capture(len(layers))
    for index, (_, layer) in enumerate(layers):
        layer.register_forward_hook(capture.hook(index))
    dropouts = [m for m in module.modules() if isinstance(m, SeededDropout)]
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    return InitialModel(
        key=key,
        module=module,
        init_sha256=init_sha256,
        value_stats=value_stats,
        generator_state=generator.get_state() if dropouts else None,  # 5 KB where unused
        named_parameters=named,
        layers=layers,
        owners=[owner.get(id(p)) for _, p in named],
        dropouts=dropouts,
        capture=capture,
        buffers=buffers,
        nbytes=footprint(module, len(layers), buffers),
    )


class ModelCache:
    """Idle initial models, a stack per key, keys in least recently used order; the least
    recently used are evicted beyond `max_bytes` of footprint or `max_entries` models."""

    def __init__(self, max_bytes: int, max_entries: int, statistics: Statistics, side: Executor):
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.statistics = statistics
        self._side = side
        self._idle: OrderedDict[bytes, list[InitialModel]] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0  # footprint of the idle models
        self._entries = 0  # idle models
        self.hits = 0
        self.misses = 0
        self.builds_cancelled = 0  # stopped part-way (a deadline or a client that left)

    def checkout(self, plan: RunPlan, cancel: threading.Event) -> InitialModel:
        """An idle model for this plan if one is cached (removed from the cache while
        lent), else a new one; a build raises Cancelled soon after `cancel` is set."""
        key = cache_key(plan)
        with self._lock:
            stack = self._idle.get(key)
            model = self._take(key, stack) if stack else None
            if model is None:
                self.misses += 1
            else:
                self.hits += 1
        if model is None:
            self._make_room(_estimated_bytes(plan))
            try:
                model = build_initial(plan, key, self.statistics, self._side, cancel)
            except Cancelled as cancelled:
                _free_elsewhere(cancelled)
                with self._lock:
                    self.builds_cancelled += 1
                raise Cancelled from None
        model.prepare(plan.request.mode == "train", plan.request.seed, plan.device)
        return model

    def checkin(self, model: InitialModel) -> None:
        """Reset the model and keep it as the most recently used, unless it alone exceeds a
        bound."""
        model.reset()
        if model.nbytes > self.max_bytes or self.max_entries == 0:
            return
        with self._lock:
            stack = self._idle.get(model.key)
            if stack is None:
                self._idle[model.key] = [model]
            else:
                stack.append(model)
                self._idle.move_to_end(model.key)
            self._bytes += model.nbytes
            self._entries += 1
            self._evict(0, 0)

    def _take(self, key: bytes, stack: list[InitialModel]) -> InitialModel:
        """Pop a model of `key` (its stack not empty); under the lock."""
        model = stack.pop()
        if not stack:
            del self._idle[key]
        self._bytes -= model.nbytes
        self._entries -= 1
        return model

    def _make_room(self, incoming: int) -> None:
        """Evict before building, so that the cache and the model being built together stay
        within the bounds (evicting after would hold both at the peak)."""
        with self._lock:
            self._evict(incoming, 1)

    def _evict(self, incoming: int, entries: int) -> None:
        """Least recently used first, until `incoming` more bytes and `entries` more models
        fit; under the lock."""
        while self._idle and (
            self._bytes + incoming > self.max_bytes or self._entries + entries > self.max_entries
        ):
            key, stack = next(iter(self._idle.items()))
            self._take(key, stack)

    @property
    def idle_bytes(self) -> int:
        return self._bytes

    @property
    def idle_entries(self) -> int:
        return self._entries
