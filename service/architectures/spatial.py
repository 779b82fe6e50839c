"""Layers on (N, C, ...) inputs: convolutions, pools, channel norms and channel dropout.

Each shape rule refuses, naming the layer, what PyTorch would refuse when the module runs
(channels that groups do not divide, a reflection wider than the input, an empty output), and
estimates what the layer keeps for backward (`activation_elements`: its output, which what
follows may keep, and what it saves beyond its input, which the layer before counted) and its
largest transient (`workspace_elements`). The builders make PyTorch's own modules (or the
two of ours in `modules`), with PyTorch's parameter names.
"""

import math
from collections.abc import Callable
from typing import Any

from torch import nn

from service.architectures.base import Estimate, Shape
from service.architectures.layer_rules import LayerType, fail, need_dims
from service.architectures.modules import ChannelDropout, GlobalPool
from service.errors import Loc

_TAKES = {1: "(N, C, L)", 2: "(N, C, H, W)"}


def _spatial_dims(spec: Any) -> int:
    """1 or 2, from the type's suffix (`conv1d`, `max_pool2d`, ...)."""
    return 1 if spec.type.endswith("1d") else 2


def _need_spatial(spec: Any, shape: Shape, loc: Loc, spatial: int) -> None:
    need_dims(spec, shape, loc, (2 + spatial,), _TAKES[spatial])


def _check_groups(spec: Any, shape: Shape, loc: Loc) -> None:
    """PyTorch's rule: groups divide both the input's and the output's channels."""
    for what, channels in (("input", shape[1]), ("output", spec.out_channels)):
        if channels % spec.groups:
            why = f"groups={spec.groups} does not divide the {channels} {what} channels"
            raise fail(loc, spec, shape, why)


# convolution ---------------------------------------------------------------------------------
def _conv_padding(spec: Any) -> tuple[int, int]:
    """The (left, right) padding of each spatial dimension: 'same' pads d·(k-1) in all, the
    odd one on the right, as nn.ConvNd does."""
    if spec.padding == "valid":
        return 0, 0
    if spec.padding == "same":
        total = spec.dilation * (spec.kernel_size - 1)
        return total // 2, total - total // 2
    return spec.padding, spec.padding


def _check_padding_mode(spec: Any, shape: Shape, loc: Loc, pad: int) -> None:
    """F.pad's limits for the non-zero modes: a reflection shorter than each dimension, a
    circular wrap at most once around it."""
    smallest = min(shape[2:])
    if spec.padding_mode == "reflect" and pad >= smallest:
        why = f"reflect padding {pad} must be less than each spatial size ({smallest} is not)"
        raise fail(loc, spec, shape, why)
    if spec.padding_mode == "circular" and pad > smallest:
        why = f"circular padding {pad} wraps around a spatial size of {smallest} more than once"
        raise fail(loc, spec, shape, why)


def _conv_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    spatial = _spatial_dims(spec)
    _need_spatial(spec, shape, loc, spatial)
    _check_groups(spec, shape, loc)
    left, right = _conv_padding(spec)
    if spec.padding_mode != "zeros":
        _check_padding_mode(spec, shape, loc, max(left, right))
    span = spec.dilation * (spec.kernel_size - 1) + 1
    padded = [s + left + right for s in shape[2:]]
    if min(padded) < span:
        dilated = f" with dilation {spec.dilation} spans {span}," if spec.dilation > 1 else ""
        why = f"kernel {spec.kernel_size}{dilated} larger than the padded input"
        raise fail(loc, spec, shape, why)
    sizes = [(s - span) // spec.stride + 1 for s in padded]
    c_in, k = shape[1], spec.kernel_size**spatial
    out = (shape[0], spec.out_channels, *sizes)
    per_group = c_in // spec.groups * k  # inputs each output element sums
    params = spec.out_channels * per_group + (spec.out_channels if spec.bias else 0)
    flops = 6 * math.prod(out) * per_group
    # Saved: the input (padded first for the other modes and asymmetric 'same'), and the
    # output, kept by what follows.
    padded_input = shape[0] * c_in * math.prod(padded)
    kept = padded_input if spec.padding_mode != "zeros" or left != right else math.prod(shape)
    # The unfolded input (im2col) of the non-oneDNN paths and its gradient, one group at a
    # time, for the whole batch (one sample at a time when dilated); grouped, also the
    # group's contiguous input and the outputs before their concat.
    positions = math.prod(sizes) * (1 if spec.dilation > 1 else shape[0])
    columns = 2 * positions * per_group
    if spec.groups > 1:
        columns += padded_input // spec.groups + math.prod(out)
    estimate = Estimate(params, math.prod(out) + kept, flops, 1)
    return out, estimate + Estimate(workspace_elements=columns)


def _conv_build(spec: Any, shape: Shape) -> nn.Module:
    cls = nn.Conv1d if spec.type == "conv1d" else nn.Conv2d
    return cls(
        shape[1],
        spec.out_channels,
        spec.kernel_size,
        stride=spec.stride,
        padding=spec.padding,
        dilation=spec.dilation,
        groups=spec.groups,
        bias=spec.bias,
        padding_mode=spec.padding_mode,
    )


def _conv_transpose_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    spatial = _spatial_dims(spec)
    _need_spatial(spec, shape, loc, spatial)
    _check_groups(spec, shape, loc)
    span = spec.dilation * (spec.kernel_size - 1) + 1
    # PyTorch's: (L - 1)·stride - 2·padding + dilation·(kernel - 1) + output_padding + 1
    sizes = [
        (s - 1) * spec.stride - 2 * spec.padding + span + spec.output_padding for s in shape[2:]
    ]
    if min(sizes) < 1:
        why = f"padding {spec.padding} leaves an output of size {min(sizes)}"
        raise fail(loc, spec, shape, why)
    c_in, k = shape[1], spec.kernel_size**spatial
    out = (shape[0], spec.out_channels, *sizes)
    per_group = spec.out_channels // spec.groups * k  # outputs each input element feeds
    params = c_in * per_group + (spec.out_channels if spec.bias else 0)
    flops = 6 * math.prod(shape) * per_group
    # col2im's columns (one row per input position) and their gradient, as for conv.
    columns = 2 * math.prod(shape) // c_in * per_group
    if spec.groups > 1:
        columns += math.prod(shape) // spec.groups + math.prod(out)
    estimate = Estimate(params, math.prod(out) + math.prod(shape), flops, 1)
    return out, estimate + Estimate(workspace_elements=columns)


def _conv_transpose_build(spec: Any, shape: Shape) -> nn.Module:
    cls = nn.ConvTranspose1d if spec.type == "conv_transpose1d" else nn.ConvTranspose2d
    return cls(
        shape[1],
        spec.out_channels,
        spec.kernel_size,
        stride=spec.stride,
        padding=spec.padding,
        output_padding=spec.output_padding,
        groups=spec.groups,
        bias=spec.bias,
        dilation=spec.dilation,
    )


# pooling -------------------------------------------------------------------------------------
def _pool_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    _need_spatial(spec, shape, loc, _spatial_dims(spec))
    if 2 * spec.padding > spec.kernel_size:
        raise fail(loc, spec, shape, "padding must be at most half the kernel size")
    stride = spec.stride or spec.kernel_size
    sizes = [(s + 2 * spec.padding - spec.kernel_size) // stride + 1 for s in shape[2:]]
    if min(sizes) < 1:
        raise fail(loc, spec, shape, f"kernel {spec.kernel_size} larger than the padded input")
    out = (*shape[:2], *sizes)
    # The output and (max) the int64 indices, twice a float's size.
    return out, Estimate(0, 3 * math.prod(out), 3 * math.prod(shape), 1)


def _pool_build(spec: Any, shape: Shape) -> nn.Module:
    classes: dict[str, Callable[..., nn.Module]] = {
        "max_pool1d": nn.MaxPool1d,
        "avg_pool1d": nn.AvgPool1d,
        "max_pool2d": nn.MaxPool2d,
        "avg_pool2d": nn.AvgPool2d,
    }
    return classes[spec.type](spec.kernel_size, spec.stride or spec.kernel_size, spec.padding)


def _output_size(spec: Any) -> list[int]:
    size = spec.output_size
    return list(size) if isinstance(size, list) else [size] * _spatial_dims(spec)


def _adaptive_pool_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    _need_spatial(spec, shape, loc, _spatial_dims(spec))
    out = (*shape[:2], *_output_size(spec))
    # Windows overlap when the output is larger than the input: each covers at most
    # ceil(in / out) + 1 positions.
    window = math.prod(-(-s // o) + 1 for s, o in zip(shape[2:], out[2:], strict=True))
    return out, Estimate(0, 3 * math.prod(out), 3 * math.prod(out) * window, 1)


def _adaptive_pool_build(spec: Any, shape: Shape) -> nn.Module:
    classes: dict[str, Callable[..., nn.Module]] = {
        "adaptive_avg_pool1d": nn.AdaptiveAvgPool1d,
        "adaptive_max_pool1d": nn.AdaptiveMaxPool1d,
        "adaptive_avg_pool2d": nn.AdaptiveAvgPool2d,
        "adaptive_max_pool2d": nn.AdaptiveMaxPool2d,
    }
    size = spec.output_size
    return classes[spec.type](tuple(size) if isinstance(size, list) else size)


def _global_pool_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    need_dims(spec, shape, loc, (3, 4, 5), "(N, C, L), (N, C, H, W) or (N, C, D, H, W)")
    out = shape[:2]
    # The output and (max) the indices of the maxima.
    return out, Estimate(0, 3 * math.prod(out), 3 * math.prod(shape), 1)


# channel norms -------------------------------------------------------------------------------
def _group_norm_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    need_dims(spec, shape, loc, range(2, 9), "(N, C, ...)")
    if shape[1] % spec.num_groups:
        why = f"num_groups={spec.num_groups} does not divide the {shape[1]} channels"
        raise fail(loc, spec, shape, why)
    n, stats = math.prod(shape), shape[0] * spec.num_groups
    # The output, and each group's mean and reciprocal deviation.
    return shape, Estimate(2 * shape[1] if spec.affine else 0, n + 2 * stats, 24 * n, 1)


def _instance_norm_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    need_dims(spec, shape, loc, (3, 4), "(N, C, L) or (N, C, H, W)")
    if not spec.track_running_stats and math.prod(shape[2:]) == 1:
        raise fail(loc, spec, shape, "needs more than 1 spatial element per channel")
    n, stats = math.prod(shape), shape[0] * shape[1]
    # The output, and (as one batch norm over N·C channels) the per-channel statistics, the
    # weight and the running statistics repeated N times.
    return shape, Estimate(2 * shape[1] if spec.affine else 0, n + 6 * stats, 24 * n, 1)


def _instance_norm_build(spec: Any, shape: Shape) -> nn.Module:
    cls = nn.InstanceNorm2d if len(shape) == 4 else nn.InstanceNorm1d
    return cls(shape[1], spec.eps, spec.momentum, spec.affine, spec.track_running_stats)


# channel dropout -----------------------------------------------------------------------------
def _channel_dropout_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    _need_spatial(spec, shape, loc, _spatial_dims(spec))
    n = math.prod(shape)
    # The output and the (N, C, 1, ...) noise the input is multiplied by.
    return shape, Estimate(0, n + shape[0] * shape[1], 2 * n, 1)


SPATIAL_LAYERS: dict[str, LayerType] = {
    "conv1d": LayerType(_conv_infer, _conv_build),
    "conv2d": LayerType(_conv_infer, _conv_build),
    "conv_transpose1d": LayerType(_conv_transpose_infer, _conv_transpose_build),
    "conv_transpose2d": LayerType(_conv_transpose_infer, _conv_transpose_build),
    **{
        name: LayerType(_pool_infer, _pool_build)
        for name in ("max_pool1d", "avg_pool1d", "max_pool2d", "avg_pool2d")
    },
    **{
        name: LayerType(_adaptive_pool_infer, _adaptive_pool_build)
        for name in (
            "adaptive_avg_pool1d",
            "adaptive_max_pool1d",
            "adaptive_avg_pool2d",
            "adaptive_max_pool2d",
        )
    },
    "global_avg_pool": LayerType(_global_pool_infer, lambda s, _: GlobalPool("avg")),
    "global_max_pool": LayerType(_global_pool_infer, lambda s, _: GlobalPool("max")),
    "group_norm": LayerType(
        _group_norm_infer, lambda s, shape: nn.GroupNorm(s.num_groups, shape[1], s.eps, s.affine)
    ),
    "instance_norm": LayerType(_instance_norm_infer, _instance_norm_build),
    "dropout1d": LayerType(_channel_dropout_infer, lambda s, _: ChannelDropout(s.p, 1)),
    "dropout2d": LayerType(_channel_dropout_infer, lambda s, _: ChannelDropout(s.p, 2)),
}
