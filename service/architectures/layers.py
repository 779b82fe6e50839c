"""The layer registry of the `sequential` kind: per `type`, a shape rule and a builder.

A shape rule maps (spec, input shape) to (output shape, estimate) or raises ShapeMismatch
naming the layer; a builder makes the module for a known input shape (under the meta
device). Adding a layer type is one spec model in `schemas/layers.py` and one entry here.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from service.architectures.activations import ACTIVATIONS, make_activation
from service.architectures.base import Estimate, Shape, layer_mismatch
from service.architectures.modules import (
    MultiHeadAttention,
    Residual,
    SeededDropout,
    TransformerBlock,
)
from service.architectures.recurrent import recurrent_build, recurrent_infer
from service.errors import Loc


@dataclass(frozen=True)
class LayerType:
    infer: Callable[[Any, Shape, Loc], tuple[Shape, Estimate]]
    build: Callable[[Any, Shape], nn.Module]


_fail = layer_mismatch


def _need_dims(spec: Any, shape: Shape, loc: Loc, dims: Sequence[int], what: str) -> None:
    if len(shape) not in dims:
        raise _fail(loc, spec, shape, f"expects {what}")


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


# convolution and pooling -------------------------------------------------------------------
def _window(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _conv_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    spatial = 1 if spec.type == "conv1d" else 2
    _need_dims(spec, shape, loc, (2 + spatial,), "(N, C, L)" if spatial == 1 else "(N, C, H, W)")
    sizes = [_window(s, spec.kernel_size, spec.stride, spec.padding) for s in shape[2:]]
    if min(sizes) < 1:
        raise _fail(loc, spec, shape, f"kernel {spec.kernel_size} larger than the padded input")
    c_in, k = shape[1], spec.kernel_size**spatial
    out = (shape[0], spec.out_channels, *sizes)
    params = spec.out_channels * c_in * k + (spec.out_channels if spec.bias else 0)
    flops = 6 * math.prod(out) * c_in * k
    # The unfolded input (im2col) of the non-oneDNN paths, and its gradient.
    columns = 2 * math.prod(out) // spec.out_channels * c_in * k
    estimate = Estimate(params, math.prod(out) + math.prod(shape), flops, 1)
    return out, estimate + Estimate(workspace_elements=columns)


def _conv_build(spec: Any, shape: Shape) -> nn.Module:
    cls = nn.Conv1d if spec.type == "conv1d" else nn.Conv2d
    return cls(
        shape[1], spec.out_channels, spec.kernel_size, spec.stride, spec.padding, bias=spec.bias
    )


def _pool_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    _need_dims(spec, shape, loc, (4,), "(N, C, H, W)")
    if 2 * spec.padding > spec.kernel_size:
        raise _fail(loc, spec, shape, "padding must be at most half the kernel size")
    stride = spec.stride or spec.kernel_size
    sizes = [_window(s, spec.kernel_size, stride, spec.padding) for s in shape[2:]]
    if min(sizes) < 1:
        raise _fail(loc, spec, shape, f"kernel {spec.kernel_size} larger than the padded input")
    out = (*shape[:2], *sizes)
    return out, Estimate(0, 2 * math.prod(out), 3 * math.prod(shape), 1)


def _pool_build(spec: Any, shape: Shape) -> nn.Module:
    cls = nn.MaxPool2d if spec.type == "max_pool2d" else nn.AvgPool2d
    return cls(spec.kernel_size, spec.stride or spec.kernel_size, spec.padding)


# embedding -----------------------------------------------------------------------------------
def _embedding_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    # That it is the first layer (it takes the token ids) is checked by the sequential signature.
    out = (*shape, spec.embedding_dim)
    return out, Estimate(spec.num_embeddings * spec.embedding_dim, math.prod(out), 0, 1)


# attention -----------------------------------------------------------------------------------
def attention_estimate(shape: Shape, heads: int, qkv_bias: bool, ff_mult: int = 0) -> Estimate:
    n, t, d = shape
    params = 3 * d * d + (3 * d if qkv_bias else 0) + d * d + d
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
    return shape, attention_estimate(shape, spec.heads, spec.qkv_bias, getattr(spec, "ff_mult", 0))


def _attention_build(spec: Any, shape: Shape) -> nn.Module:
    d = shape[2]
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
def _projection_kind(shape: Shape, out: Shape) -> str | None:
    """`linear` when only the last dimension changes, a 1x1 conv when only channels do."""
    if shape[:-1] == out[:-1]:
        return "linear"
    if len(shape) in (3, 4) and shape[0] == out[0] and shape[2:] == out[2:]:
        return "conv1d" if len(shape) == 3 else "conv2d"
    return None


def _residual_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    out, estimate = infer_layers(spec.body, shape, (*loc, "body"))
    if out == shape:
        return out, estimate + Estimate(activation_elements=math.prod(out), layers=1)
    if not spec.projection:
        raise _fail(
            loc, spec, shape, f"its body maps to {list(out)}; keep the shape or set projection"
        )
    kind = _projection_kind(shape, out)
    if kind is None:
        raise _fail(loc, spec, shape, f"no linear or 1x1 projection maps it to {list(out)}")
    axis = -1 if kind == "linear" else 1
    params = shape[axis] * out[axis] + out[axis]
    flops = 6 * (math.prod(out) // out[axis]) * shape[axis] * out[axis]
    return out, estimate + Estimate(params, 2 * math.prod(out), flops, 1)


def _residual_build(spec: Any, shape: Shape) -> nn.Module:
    body, out = build_layers(spec.body, shape)
    kind = None if out == shape else _projection_kind(shape, out)
    projection: nn.Module | None = None
    if kind == "linear":
        projection = nn.Linear(shape[-1], out[-1])
    elif kind is not None:
        projection = (nn.Conv1d if kind == "conv1d" else nn.Conv2d)(shape[1], out[1], 1)
    return Residual(body, projection)


LAYER_TYPES: dict[str, LayerType] = {
    "linear": LayerType(_linear_infer, _linear_build),
    **{
        name: LayerType(
            _elementwise(activation.new_output + activation.saved),
            lambda s, _: make_activation(s.type),
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
    "conv1d": LayerType(_conv_infer, _conv_build),
    "conv2d": LayerType(_conv_infer, _conv_build),
    "max_pool2d": LayerType(_pool_infer, _pool_build),
    "avg_pool2d": LayerType(_pool_infer, _pool_build),
    "embedding": LayerType(
        _embedding_infer, lambda s, _: nn.Embedding(s.num_embeddings, s.embedding_dim)
    ),
    "attention": LayerType(_attention_infer, _attention_build),
    "transformer_block": LayerType(_attention_infer, _block_build),
    "residual": LayerType(_residual_infer, _residual_build),
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
