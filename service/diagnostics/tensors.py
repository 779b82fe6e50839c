"""Tensor payloads to tensors: shape probing (cheap), strict checking, then the tensor."""

import math
import threading
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


class LiteralChecks:
    """Nested-list payloads checked (and converted) within one request, by identity: a
    compare's variants and a sweep's points share the base's input and target, which are
    checked once, and converted once and kept while the request's runs go on (a payload
    only one run uses is not kept)."""

    def __init__(self) -> None:
        self._checked: dict[tuple[int, Shape, bool, str], list[Any]] = {}
        self._uses: dict[int, int] = {}  # runs checked with each payload
        self._tensors: dict[tuple[int, bool, torch.dtype], tuple[list[Any], torch.Tensor]] = {}
        self._lock = threading.Lock()  # a job's runs may convert on several threads

    def check(
        self,
        payload: Any,
        shape: Shape,
        integers: bool,
        dtype: str,
        loc: Loc,
        ids: str = "id",
        note: str = "",
    ) -> None:
        """A nested-list payload, checked before it is queued: rectangular, numbers of the
        right kind, finite, and within the dtype's range (see `check_values`)."""
        if not isinstance(payload, list):
            return
        self._uses[id(payload)] = self._uses.get(id(payload), 0) + 1
        key = (id(payload), shape, integers, dtype)
        if key not in self._checked:
            peak = check_values(payload, shape, integers, loc, ids, note)
            if not integers and peak > torch.finfo(DTYPES[dtype]).max:
                raise _overflow(DTYPES[dtype], loc)
            self._checked[key] = payload  # held, so that its id is not reused meanwhile

    def tensor(
        self,
        payload: Any,
        shape: Shape,
        integers: bool,
        dtype: torch.dtype,
        loc: Loc,
        ids: str = "id",
        note: str = "",
    ) -> torch.Tensor:
        """`tensor_from_payload`, once per nested list shared by runs (they only read it)."""
        if not isinstance(payload, list) or self._uses.get(id(payload), 0) < 2:
            return tensor_from_payload(payload, shape, integers, dtype, loc, ids, note)
        key = (id(payload), integers, dtype)
        with self._lock:
            if key not in self._tensors:
                tensor = tensor_from_payload(payload, shape, integers, dtype, loc, ids, note)
                self._tensors[key] = (payload, tensor)
            return self._tensors[key][1]


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
    A nested list was checked by `LiteralChecks.check` when the run was planned; `ids` and `note`
    word the error of a generator that draws no integer ids.

    Generated floats are drawn in float32 (as `torch.randn` does by default), then cast.
    """
    if isinstance(payload, list):
        try:
            return _from_list(payload, torch.int64 if integers else dtype)
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
    if not torch.isfinite(tensor).all():  # a huge std or mean overflows the draw itself
        raise InvalidTensor.at(
            loc, "values overflow float32, the dtype generators draw in (as torch.randn does)"
        )
    tensor = tensor.to(dtype)
    if not torch.isfinite(tensor).all():
        raise _overflow(dtype, loc)
    return tensor


# A nested list longer than this is converted in blocks of rows: one `torch.tensor` call
# over a million numbers holds the GIL (and so the event loop) for tens of milliseconds.
_BLOCK_ELEMENTS = 1 << 15


def _from_list(payload: list[Any], dtype: torch.dtype) -> torch.Tensor:
    """`torch.tensor(payload, dtype=dtype)`, element for element, in blocks of rows."""
    row = payload[0]
    row_elements = 1
    while isinstance(row, list):
        row_elements *= len(row)
        row = row[0]
    rows = max(1, _BLOCK_ELEMENTS // row_elements)
    if len(payload) <= rows:
        return torch.tensor(payload, dtype=dtype)
    blocks = [
        torch.tensor(payload[i : i + rows], dtype=dtype) for i in range(0, len(payload), rows)
    ]
    return torch.cat(blocks)


def _overflow(dtype: torch.dtype, loc: Loc) -> InvalidTensor:
    return InvalidTensor.at(loc, f"values overflow {str(dtype).removeprefix('torch.')}")
