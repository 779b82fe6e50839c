"""A request's `init`: which tensors each scheme redraws, and the draws themselves.

After every module has drawn its PyTorch default (`init.initialise`), each layer with an
`init` (its own, else the model's default) redraws its weights, then its biases, in the
order of the spec, from the same generator: bit-identical to `torch.manual_seed(seed)`,
plain construction, then the `torch.nn.init` calls. The draws of large tensors are chunked,
with cancellation checks, as in `init.initialise`.
"""

import functools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn
from torch.nn import init

from service.architectures.init import Check, _chunked
from service.errors import InvalidRequest, Loc, raise_if_cancelled
from service.schemas import init as schemes
from service.schemas.init import Init, Scheme


@dataclass(frozen=True)
class InitUnit:
    """One layer of a model: the module holding its own parameters, and its own `init`."""

    loc: Loc  # the layer's spec, relative to the model spec
    module: nn.Module | None  # None: no parameters (a residual without projection)
    own: Init | None = None
    what: str = "the layer"  # the layer, as error messages name it


def no_units(spec: Any, module: nn.Module) -> Sequence[InitUnit]:
    return ()


@dataclass(frozen=True)
class Draw:
    """One `torch.nn.init` call."""

    tensor: torch.Tensor
    scheme: Scheme


# The draws, by scheme: each computes what its torch.nn.init function computes, in the same
# order of operations, and draws in chunks where the draw is elementwise.
Drawer = Callable[[torch.Tensor, Any, torch.Generator, Check], object]


def _uniform(t: torch.Tensor, low: float, high: float, g: torch.Generator, check: Check) -> None:
    _chunked(t, lambda chunk: chunk.uniform_(low, high, generator=g), check)


def _normal(t: torch.Tensor, mean: float, std: float, g: torch.Generator, check: Check) -> None:
    _chunked(t, lambda chunk: chunk.normal_(mean, std, generator=g), check)


def _xavier_std(t: torch.Tensor, s: Any) -> float:
    fan_in, fan_out = init._calculate_fan_in_and_fan_out(t)
    gain: float = s.gain
    return gain * math.sqrt(2.0 / float(fan_in + fan_out))


def _kaiming_std(t: torch.Tensor, s: Any) -> float:
    fan = init._calculate_correct_fan(t, s.mode)
    gain = init.calculate_gain(s.nonlinearity, s.a)
    return gain / math.sqrt(fan)


def _xavier_uniform(t: torch.Tensor, s: Any, g: torch.Generator, check: Check) -> None:
    bound = math.sqrt(3.0) * _xavier_std(t, s)
    _uniform(t, -bound, bound, g, check)


def _kaiming_uniform(t: torch.Tensor, s: Any, g: torch.Generator, check: Check) -> None:
    bound = math.sqrt(3.0) * _kaiming_std(t, s)
    _uniform(t, -bound, bound, g, check)


DRAWERS: dict[str, Drawer] = {
    "xavier_uniform": _xavier_uniform,
    "xavier_normal": lambda t, s, g, check: _normal(t, 0.0, _xavier_std(t, s), g, check),
    "kaiming_uniform": _kaiming_uniform,
    "kaiming_normal": lambda t, s, g, check: _normal(t, 0, _kaiming_std(t, s), g, check),
    # Drawn whole: orthogonal_ factorises the tensor, trunc_normal_'s rejection rounds redraw
    # all of it.
    "orthogonal": lambda t, s, g, check: init.orthogonal_(t, s.gain, generator=g),
    "trunc_normal": lambda t, s, g, check: init.trunc_normal_(
        t, s.mean, s.std, s.a, s.b, generator=g
    ),
    "normal": lambda t, s, g, check: _normal(t, s.mean, s.std, g, check),
    "uniform": lambda t, s, g, check: _uniform(t, s.a, s.b, g, check),
    "constant": lambda t, s, g, check: t.fill_(s.val),
    "zeros": lambda t, s, g, check: t.zero_(),
    "ones": lambda t, s, g, check: t.fill_(1.0),
}
assert set(DRAWERS) == set(schemes.SCHEME_NAMES), "one drawer per scheme"


def _is(role: str, name: str) -> bool:
    """`weight` names weight, in_proj_weight, weight_ih_l0 (PyTorch's recurrent and fused
    names); `bias` likewise."""
    last = name.rsplit(".", 1)[-1]
    return last.startswith(role) or last.endswith(role)


def _unit_draws(unit: InitUnit, default: Init | None, loc: Loc) -> list[Draw]:
    """The unit's own init, checked against its parameters, or the model's default where
    the unit has a weight of >= 2 dimensions."""
    named = list(unit.module.named_parameters()) if unit.module is not None else []
    weights = [p for name, p in named if _is("weight", name)]
    biases = [p for name, p in named if _is("bias", name)]
    chosen = unit.own
    if chosen is not None:
        at = (*loc, *unit.loc, "init")
        if not named:
            raise InvalidRequest.at(at, f"{unit.what} has no parameters: it takes no init")
        if chosen.weight is not None:
            if not weights:
                raise InvalidRequest.at((*at, "weight"), f"{unit.what} has no weight")
            flat = [list(w.shape) for w in weights if w.dim() < 2]
            if chosen.weight.needs_matrix and flat:
                raise InvalidRequest.at(
                    (*at, "weight"),
                    f"{chosen.weight.scheme} needs a weight of >= 2 dimensions; "
                    f"{unit.what} has a weight of shape {flat[0]}: use one of "
                    + ", ".join(schemes.scheme_name(s) for s in schemes.BIAS_SCHEMES),
                )
        if chosen.bias is not None and not biases:
            raise InvalidRequest.at((*at, "bias"), f"{unit.what} has no bias")
    elif default is not None and any(w.dim() >= 2 for w in weights):
        chosen = default
    else:
        return []
    weight, bias = chosen.weight, chosen.bias
    draws: list[Draw] = [Draw(w, weight) for w in weights] if weight is not None else []
    return draws + ([Draw(b, bias) for b in biases] if bias is not None else [])


def init_draws(kind: Any, spec: Any, module: nn.Module, loc: Loc = ()) -> list[Draw]:
    """Every draw of the spec's `init`s on `module` (built from `spec`), in order; raises
    InvalidRequest located under `loc` (the model spec's location) for an init a layer
    cannot take. Meta modules will do: only names and shapes are read."""
    default = getattr(spec, "init", None)
    return [d for unit in kind.init_units(spec, module) for d in _unit_draws(unit, default, loc)]


@torch.no_grad()
def apply_draws(
    draws: Sequence[Draw], generator: torch.Generator, cancel: threading.Event | None = None
) -> None:
    """Make the draws in order; raises Cancelled soon after `cancel` is set."""
    check = functools.partial(raise_if_cancelled, cancel)
    for draw in draws:
        check()
        DRAWERS[draw.scheme.scheme](draw.tensor, draw.scheme, generator, check)  # type: ignore[attr-defined]


def _nodes(node: Any) -> Iterator[Any]:
    yield node
    values = node.__dict__.values() if isinstance(node, BaseModel) else node
    for value in values:
        if isinstance(value, BaseModel | list):
            yield from _nodes(value)


def has_layer_init(spec: Any) -> bool:
    """Whether a layer of the spec has an init of its own (which its parameters must fit)."""
    return any(
        isinstance(node, BaseModel) and node is not spec and getattr(node, "init", None) is not None
        for node in _nodes(spec)
    )


# Schemes that are not elementwise draws: their FLOPs and transient tensors are budgeted.
_COSTLY = ("orthogonal", "trunc_normal")


def _draw_cost(draw: Draw) -> tuple[int, int]:
    """(FLOPs, transient elements) of one draw beyond the tensor it fills."""
    name, t = draw.scheme.scheme, draw.tensor  # type: ignore[attr-defined]
    if name == "orthogonal":
        rows = t.shape[0]
        m, n = max(rows, t.numel() // rows), min(rows, t.numel() // rows)
        # Householder QR and forming Q; the normal draw, Q and R beside the tensor.
        return 4 * m * n * n, 2 * m * n + n * n
    if name == "trunc_normal":  # the rejection rounds' proposals, acceptances and result
        return 0, 3 * t.numel()
    return 0, 0


def check_layer_inits(
    kind: Any, spec: Any, input_shape: tuple[int, ...], loc: Loc
) -> tuple[int, int]:
    """Refuse, before anything is allocated, a layer's init that its parameters do not fit
    (located under `loc`, the request's); return the (FLOPs, largest transient in elements)
    of the draws that factorise or reject. The model is built on the meta device (no
    memory, no draws), and only where some layer has an init of its own or a scheme costs."""
    costly = any(getattr(node, "scheme", None) in _COSTLY for node in _nodes(spec))
    if not (costly or has_layer_init(spec)):
        return 0, 0
    with torch.device("meta"):
        module = kind.build(spec, input_shape)
    costs = [_draw_cost(d) for d in init_draws(kind, spec, module, (*loc, "model"))]
    return sum(f for f, _ in costs), max((e for _, e in costs), default=0)
