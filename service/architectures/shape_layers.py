"""The shape layers of the `sequential` kind: reshape, permute, transpose and unflatten.

They hold no parameters and compute nothing (flops 0). The batch dimension stays first: a
reshape keeps it by construction, a permutation must leave dim 0 in place, and transpose and
unflatten must not touch it. Estimates: permute and transpose return non-contiguous views,
which the next layer's kernel may copy for a moment (workspace); a reshape of such a view is
a copy, new memory, which is counted whether or not the input is contiguous; unflatten of a
view is a view.
"""

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from service.architectures.base import Estimate, Shape
from service.architectures.layer_rules import LayerType, fail
from service.errors import Loc


class Reshape(nn.Module):
    """x.reshape(N, *shape)."""

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Permute(nn.Module):
    """x.permute(*dims)."""

    def __init__(self, dims: Sequence[int]):
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class Transpose(nn.Module):
    """torch.transpose(x, dim0, dim1)."""

    def __init__(self, dim0: int, dim1: int):
        super().__init__()
        self.dim0, self.dim1 = dim0, dim1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(self.dim0, self.dim1)

    def extra_repr(self) -> str:
        return f"dim0={self.dim0}, dim1={self.dim1}"


def _sizes(spec: Any, shape: Shape, loc: Loc, sizes: Sequence[int], total: int, what: str) -> Shape:
    """`sizes` with its -1 inferred so that they hold `total` elements, as PyTorch does."""
    known = math.prod(s for s in sizes if s != -1)
    fits = total % known == 0 if -1 in sizes else known == total
    if not fits:
        raise fail(loc, spec, shape, f"{list(sizes)} does not fit {what} {total} elements")
    return tuple(total // known if s == -1 else s for s in sizes)


def _dim(spec: Any, shape: Shape, loc: Loc, dim: int, name: str) -> int:
    """`dim` counted from 0, refused when outside the input or the batch's dim 0."""
    rank = len(shape)
    if not -rank <= dim < rank:
        raise fail(loc, spec, shape, f"{name}={dim} is outside its {rank} dimensions")
    if dim % rank == 0:
        raise fail(loc, spec, shape, f"{name}={dim} is the batch dimension, which stays first")
    return dim % rank


def _reshape_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    per_sample = math.prod(shape[1:])
    out = (shape[0], *_sizes(spec, shape, loc, spec.shape, per_sample, "a sample's"))
    return out, Estimate(activation_elements=math.prod(out), layers=1)


def _permute_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    rank = len(shape)
    if len(spec.dims) != rank:
        raise fail(loc, spec, shape, f"dims {spec.dims} must name each of its {rank} dimensions")
    if any(not -rank <= d < rank for d in spec.dims):
        raise fail(loc, spec, shape, f"dims {spec.dims} reach outside its {rank} dimensions")
    dims = [d % rank for d in spec.dims]
    if sorted(dims) != list(range(rank)):
        raise fail(loc, spec, shape, f"dims {spec.dims} is not a permutation of its dimensions")
    if dims[0] != 0:
        raise fail(loc, spec, shape, f"dims {spec.dims} must start with 0: the batch stays first")
    return tuple(shape[d] for d in dims), Estimate(layers=1, workspace_elements=math.prod(shape))


def _transpose_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    a, b = _dim(spec, shape, loc, spec.dim0, "dim0"), _dim(spec, shape, loc, spec.dim1, "dim1")
    out = list(shape)
    out[a], out[b] = shape[b], shape[a]
    return tuple(out), Estimate(layers=1, workspace_elements=math.prod(shape))


def _unflatten_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    dim = _dim(spec, shape, loc, spec.dim, "dim")
    sizes = _sizes(spec, shape, loc, spec.sizes, shape[dim], f"dim {dim}'s")
    return (*shape[:dim], *sizes, *shape[dim + 1 :]), Estimate(layers=1)


SHAPE_LAYERS: dict[str, LayerType] = {
    "reshape": LayerType(_reshape_infer, lambda s, _: Reshape(s.shape)),
    "permute": LayerType(_permute_infer, lambda s, _: Permute(s.dims)),
    "transpose": LayerType(_transpose_infer, lambda s, _: Transpose(s.dim0, s.dim1)),
    "unflatten": LayerType(_unflatten_infer, lambda s, _: nn.Unflatten(s.dim, tuple(s.sizes))),
}
