"""Tensor payloads to tensors: shape probing (cheap), strict checking, then the tensor."""

import math
from typing import Any

import torch

from service.architectures.base import Shape
from service.errors import InvalidTensor, Loc
from service.schemas.tensors import (
    MAX_DIMS,
    ConstantTensor,
    NormalTensor,
    RandintTensor,
    UniformTensor,
)


def probe_shape(payload: Any, loc: Loc) -> Shape:
    """The shape a payload claims, following first elements only: O(depth), not O(size)."""
    if not isinstance(payload, list):
        return tuple(payload.shape)
    shape: list[int] = []
    node: Any = payload
    while isinstance(node, list):
        if not node:
            raise InvalidTensor.at((*loc, *([0] * len(shape))), "empty lists are not tensors")
        shape.append(len(node))
        if len(shape) > MAX_DIMS:
            raise InvalidTensor.at(loc, f"more than {MAX_DIMS} dimensions")
        node = node[0]
    return tuple(shape)


def _first_bad(row: list[Any], integers: bool) -> int:
    for i, value in enumerate(row):
        if type(value) is not int and (integers or type(value) is not float):
            return i
    return -1


def check_values(
    data: list[Any], shape: Shape, integers: bool, loc: Loc, ids: str = "id", note: str = ""
) -> float:
    """Rectangular, numbers only (integers where `integers`), finite; errors name the element.
    A non-integer where integers are expected is said with what they are (`ids`, "class id")
    and, if given, a `note` on the other form the tensor may take.

    Returns the largest magnitude, so that a cast that would overflow can be refused.
    """
    kind = f"an integer {ids}" if integers else "a finite number"
    suffix = f" ({note})" if integers and note else ""
    last = len(shape) - 1
    peak = 0.0
    stack: list[tuple[Any, Loc, int]] = [(data, loc, 0)]
    while stack:
        node, where, depth = stack.pop()
        if type(node) is not list:
            raise InvalidTensor.at(where, f"expected a list of length {shape[depth]}")
        if len(node) != shape[depth]:
            raise InvalidTensor.at(
                where, f"ragged: length {len(node)} where {shape[depth]} was expected"
            )
        if depth < last:
            stack.extend((row, (*where, i), depth + 1) for i, row in enumerate(node))
            continue
        bad = _first_bad(node, integers)
        if bad >= 0:
            raise InvalidTensor.at((*where, bad), f"expected {kind}, got {node[bad]!r}{suffix}")
        if not integers and not all(math.isfinite(v) for v in node):
            bad = next(i for i, v in enumerate(node) if not math.isfinite(v))
            raise InvalidTensor.at((*where, bad), f"expected {kind}, got {node[bad]!r}")
        peak = max(peak, max(map(abs, node)))
    return peak


def _generate(payload: Any) -> torch.Tensor:
    generator = torch.Generator().manual_seed(payload.seed)
    shape = payload.shape
    if isinstance(payload, NormalTensor):
        return torch.randn(shape, generator=generator) * payload.std + payload.mean
    if isinstance(payload, UniformTensor):
        return torch.rand(shape, generator=generator) * (payload.high - payload.low) + payload.low
    if isinstance(payload, RandintTensor):
        return torch.randint(payload.low, payload.high, shape, generator=generator)
    assert isinstance(payload, ConstantTensor)
    fill = torch.zeros if payload.distribution == "zeros" else torch.ones
    return fill(shape)


DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def check_literal(
    payload: Any,
    shape: Shape,
    integers: bool,
    dtype: str,
    loc: Loc,
    ids: str = "id",
    note: str = "",
) -> None:
    """A nested-list payload, checked before it is queued: rectangular, numbers of the right
    kind, finite, and within the dtype's range (see `check_values`)."""
    if not isinstance(payload, list):
        return
    peak = check_values(payload, shape, integers, loc, ids, note)
    if not integers and peak > torch.finfo(DTYPES[dtype]).max:
        raise _overflow(DTYPES[dtype], loc)


def tensor_from_payload(
    payload: Any,
    shape: Shape,
    integers: bool,
    dtype: torch.dtype,
    loc: Loc,
    ids: str = "id",
    note: str = "",
) -> torch.Tensor:
    """The tensor a payload describes, on the CPU: int64 ids if `integers`, else `dtype`.
    A nested list was checked by `check_literal` when the run was planned; `ids` and `note`
    word the error of a generator that draws no integer ids.

    Generated floats are drawn in float32 (as `torch.randn` does by default), then cast.
    """
    if isinstance(payload, list):
        try:
            return torch.tensor(payload, dtype=torch.int64 if integers else dtype)
        except (OverflowError, RuntimeError) as exc:
            raise InvalidTensor.at(loc, f"a value is out of range: {exc}") from None
    tensor = _generate(payload)
    if integers:
        if tensor.is_floating_point():
            suffix = f" ({note})" if note else ""
            raise InvalidTensor.at(
                loc, f"integer {ids}s expected: use distribution 'randint'{suffix}"
            )
        return tensor
    tensor = tensor.to(dtype)
    if not torch.isfinite(tensor).all():  # a huge std or mean can overflow
        raise _overflow(dtype, loc)
    return tensor


def _overflow(dtype: torch.dtype, loc: Loc) -> InvalidTensor:
    return InvalidTensor.at(loc, f"values overflow {str(dtype).removeprefix('torch.')}")
