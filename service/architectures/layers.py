"""The layer registry of the `sequential` kind: per `type`, a shape rule and a builder.

A shape rule maps (spec, input shape) to (output shape, estimate) or raises ShapeMismatch
naming the layer; a builder makes the module for a known input shape (under the meta
device). Adding a layer type is one spec model in `schemas/layers.py` and one entry here
(or in `spatial`, which holds the layers on (N, C, ...) inputs: convolutions, pools, channel
norms and channel dropout).
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from service.architectures.activations import ACTIVATIONS, make_activation
from service.architectures.base import Estimate, Shape
from service.architectures.layer_rules import LayerType
from service.architectures.layer_rules import fail as _fail
from service.architectures.layer_rules import need_dims as _need_dims
from service.architectures.modules import (
    MultiHeadAttention,
    Residual,
    SeededDropout,
    TransformerBlock,
)
from service.architectures.recurrent import recurrent_build, recurrent_infer
from service.architectures.sequence_layers import SEQUENCE_LAYERS, TorchAttention
from service.architectures.shape_layers import SHAPE_LAYERS
from service.architectures.spatial import SPATIAL_LAYERS
from service.errors import Loc


def _elementwise(saved: int) -> Callable[[Any, Shape, Loc], tuple[Shape, Estimate]]:
    def infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
        n = math.prod(shape)
        return shape, Estimate(activation_elements=saved * n, flops=8 * n, layers=1)

    return infer


# linear ------------------------------------------------------------------------------------
def _linear_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    _need_dims(spec, shape, loc, range(1, 9), "at least one dimension")
    n_in, rows = shape[-1], math.prod(shape[:-1])
    params = n_in * spec.out_features + (spec.out_features if spec.bias else 0)
    out = (*shape[:-1], spec.out_features)
    flops = 6 * rows * n_in * spec.out_features
    return out, Estimate(params, math.prod(out), flops, 1)


def _linear_build(spec: Any, shape: Shape) -> nn.Module:
    return nn.Linear(shape[-1], spec.out_features, bias=spec.bias)


# norms ---------------------------------------------------------------------------------------
def _last_dim_norm_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    _need_dims(spec, shape, loc, range(1, 9), "at least one dimension")
    params = (2 if spec.type == "layer_norm" else 1) * shape[-1] if spec.elementwise_affine else 0
    n = math.prod(shape)
    return shape, Estimate(params, 3 * n, 24 * n, 1)


def _batch_norm_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    _need_dims(spec, shape, loc, (2, 3, 4), "(N, C), (N, C, L) or (N, C, H, W)")
    n = math.prod(shape)
    return shape, Estimate(2 * shape[1] if spec.affine else 0, 3 * n, 24 * n, 1)


def _batch_norm_build(spec: Any, shape: Shape) -> nn.Module:
    cls = nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d
    return cls(shape[1], eps=spec.eps, momentum=spec.momentum, affine=spec.affine)


# reshaping -----------------------------------------------------------------------------------
def _flatten_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    start, end = spec.start_dim % len(shape), spec.end_dim % len(shape)
    if not (
        -len(shape) <= spec.start_dim < len(shape) and -len(shape) <= spec.end_dim < len(shape)
    ):
        raise _fail(loc, spec, shape, "start_dim/end_dim outside the input's dimensions")
    if start > end:
        raise _fail(loc, spec, shape, "start_dim comes after end_dim")
    out = (*shape[:start], math.prod(shape[start : end + 1]), *shape[end + 1 :])
    return out, Estimate(layers=1)


# embedding -----------------------------------------------------------------------------------
def _embedding_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    # That it is the first layer (it takes the token ids) is checked by the sequential signature.
    out = (*shape, spec.embedding_dim)
    return out, Estimate(spec.num_embeddings * spec.embedding_dim, math.prod(out), 0, 1)


# attention -----------------------------------------------------------------------------------
def attention_estimate(
    shape: Shape, heads: int, qkv_bias: bool, ff_mult: int = 0, out_bias: bool = True
) -> Estimate:
    n, t, d = shape
    params = 3 * d * d + (3 * d if qkv_bias else 0) + d * d + (d if out_bias else 0)
    flops = 3 * (2 * n * t * 4 * d * d + 4 * n * t * t * d)
    saved = 3 * n * heads * t * t + 8 * n * t * d
    scores_grads = 3 * n * heads * t * t  # the backward pass's gradients of scores and weights
    if ff_mult:
        hidden = ff_mult * d
        params += 2 * d * hidden + hidden + d + 4 * d
        flops += 3 * 4 * n * t * d * hidden
        # Per hidden element: the first linear's output, the GELU's and what the GELU keeps.
        per_hidden = 2 + ACTIVATIONS["gelu_tanh"].saved
        saved += per_hidden * n * t * hidden + 6 * n * t * d
    return Estimate(params, saved, flops, 1, workspace_elements=scores_grads)


def _attention_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    _need_dims(spec, shape, loc, (3,), "(N, T, D)")
    if shape[2] % spec.heads:
        raise _fail(loc, spec, shape, f"heads={spec.heads} does not divide the width {shape[2]}")
    if getattr(spec, "layout", "course") == "torch":  # biases: in_proj and out_proj, or none
        return shape, attention_estimate(shape, spec.heads, spec.bias, out_bias=spec.bias)
    return shape, attention_estimate(shape, spec.heads, spec.qkv_bias, getattr(spec, "ff_mult", 0))


def _attention_build(spec: Any, shape: Shape) -> nn.Module:
    d = shape[2]
    if spec.layout == "torch":
        return TorchAttention(d, spec.heads, spec.bias, spec.causal)
    return MultiHeadAttention(d, d, spec.heads, spec.dropout, spec.qkv_bias, spec.causal)


def _block_build(spec: Any, shape: Shape) -> nn.Module:
    return TransformerBlock(
        shape[2],
        spec.heads,
        spec.dropout,
        spec.qkv_bias,
        ff_mult=spec.ff_mult,
        norm=spec.norm,
        shortcut=spec.shortcut,
        causal=spec.causal,
    )


# residual ------------------------------------------------------------------------------------
def _projection(spec: Any, shape: Shape, out: Shape, loc: Loc) -> str:
    """The shortcut's projection, `linear` (over the last dim) or `conv` (1x1, over dim 1):
    as named, or for `true` over dim 1 by rank, linear for (N, F) and conv for rank 3 and 4;
    refused unless the body changes that one dim only."""
    if not spec.projection:
        why = f"its body maps to {list(out)}; keep the shape or set projection"
        raise _fail(loc, spec, shape, why)
    rank = len(shape)
    kind = spec.projection if spec.projection is not True else "linear" if rank == 2 else "conv"
    if kind == "conv" and rank not in (3, 4):
        why = "a 1x1 conv projection takes (N, C, L) or (N, C, H, W); set projection linear"
        raise _fail(loc, spec, shape, why)
    changed = [i for i in range(rank) if shape[i] != out[i]] if len(out) == rank else None
    if changed != [rank - 1 if kind == "linear" else 1]:
        if kind == "linear":
            why = "a linear projection maps the last dim only"
        else:
            by_rank = f" (true on rank {rank})" if spec.projection is True else ""
            hint = "; set projection linear" if changed == [rank - 1] else ""
            why = f"a 1x1 conv projection{by_rank} maps dim 1 (the channels) only{hint}"
        raise _fail(loc, spec, shape, f"its body maps to {list(out)}: {why}")
    return kind


def _concat_shape(spec: Any, shape: Shape, out: Shape, loc: Loc) -> Shape:
    """torch.cat([body(x), x], dim=1): the other dims must match."""
    if len(shape) < 2 or len(out) != len(shape) or (out[0], *out[2:]) != (shape[0], *shape[2:]):
        why = f"its body maps to {list(out)}: concat along dim 1 needs the other dims equal"
        raise _fail(loc, spec, shape, why)
    return (shape[0], out[1] + shape[1], *shape[2:])


def _residual_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    out, estimate = infer_layers(spec.body, shape, (*loc, "body"))
    if spec.merge == "concat":
        merged = _concat_shape(spec, shape, out, loc)
        return merged, estimate + Estimate(activation_elements=math.prod(merged), layers=1)
    if out == shape:
        return out, estimate + Estimate(activation_elements=math.prod(out), layers=1)
    axis = -1 if _projection(spec, shape, out, loc) == "linear" else 1
    params = shape[axis] * out[axis] + out[axis]
    flops = 6 * (math.prod(out) // out[axis]) * shape[axis] * out[axis]
    return out, estimate + Estimate(params, 2 * math.prod(out), flops, 1)


def _residual_build(spec: Any, shape: Shape) -> nn.Module:
    body, out = build_layers(spec.body, shape)
    projection: nn.Module | None = None
    if spec.merge == "add" and out != shape:
        if _projection(spec, shape, out, ()) == "linear":
            projection = nn.Linear(shape[-1], out[-1])
        else:
            projection = (nn.Conv1d if len(shape) == 3 else nn.Conv2d)(shape[1], out[1], 1)
    return Residual(body, projection, spec.merge)


LAYER_TYPES: dict[str, LayerType] = {
    "linear": LayerType(_linear_infer, _linear_build),
    **{
        name: LayerType(
            _elementwise(activation.new_output + activation.saved),
            lambda s, _: make_activation(s.type, **s.model_dump(exclude={"type"})),
        )
        for name, activation in ACTIVATIONS.items()
    },
    "layer_norm": LayerType(
        _last_dim_norm_infer,
        lambda s, shape: nn.LayerNorm(shape[-1], s.eps, s.elementwise_affine),
    ),
    "rms_norm": LayerType(
        _last_dim_norm_infer,
        lambda s, shape: nn.RMSNorm(shape[-1], s.eps, s.elementwise_affine),
    ),
    "batch_norm": LayerType(_batch_norm_infer, _batch_norm_build),
    "dropout": LayerType(_elementwise(1), lambda s, _: SeededDropout(s.p)),
    "flatten": LayerType(_flatten_infer, lambda s, _: nn.Flatten(s.start_dim, s.end_dim)),
    "embedding": LayerType(
        _embedding_infer,
        lambda s, _: nn.Embedding(s.num_embeddings, s.embedding_dim, padding_idx=s.padding_idx),
    ),
    "attention": LayerType(_attention_infer, _attention_build),
    "transformer_block": LayerType(_attention_infer, _block_build),
    "residual": LayerType(_residual_infer, _residual_build),
    **SPATIAL_LAYERS,
    **SHAPE_LAYERS,
    **SEQUENCE_LAYERS,
    **{name: LayerType(recurrent_infer, recurrent_build) for name in ("rnn", "lstm", "gru")},
}


def infer_layers(layers: Sequence[Any], shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    """Shape and cost of a layer list; `loc` locates the list in the request."""
    total = Estimate()
    for index, spec in enumerate(layers):
        shape, estimate = LAYER_TYPES[spec.type].infer(spec, shape, (*loc, index))
        total = total + estimate + Estimate(output_elements=math.prod(shape))
    return shape, total


def build_layers(layers: Sequence[Any], shape: Shape) -> tuple[list[nn.Module], Shape]:
    """Modules in spec order (so initialisation draws in that order) and the output shape."""
    modules = []
    for index, spec in enumerate(layers):
        modules.append(LAYER_TYPES[spec.type].build(spec, shape))
        shape, _ = LAYER_TYPES[spec.type].infer(spec, shape, (index,))
    return modules, shape
