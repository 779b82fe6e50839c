"""A module tree -> a list of `sequential` layers, in order.

PyTorch's leaves map by class (`spec_layers`), the course's modules by their parts
(`spec_parts`), a Residual(body, projection) by its; any other container counts as its
children in registration order, which is checked on the example input like the rest.
"""

from typing import Any

from torch import nn

from service.client.spec_check import (
    Trace,
    UnsupportedModule,
    describe,
    is_torch_class,
    join,
    own_tensors,
)
from service.client.spec_layers import LEAVES, Spec, activation_name, not_in_grammar, require
from service.client.spec_parts import (
    PROJECTIONS,
    Layer,
    attention,
    children_of,
    course_norm,
    is_course_norm,
    layers_mismatch,
    make_layer,
    pick,
    same_names,
    transformer_block,
)

__all__ = ["Layer", "convert"]


# residual ------------------------------------------------------------------------------------
def _residual(m: nn.Module, path: str, trace: Trace) -> Layer:
    parts = children_of(m, path, {"body", "projection"}, "body and projection")
    body = convert(parts["body"], join(path, "body"), trace)
    names = tuple((join(f"body.{i}", s), u) for i, layer in enumerate(body) for s, u in layer.names)
    projection = parts.get("projection")
    if projection is not None:
        where = join(path, "projection")
        if type(projection) in (nn.Conv1d, nn.Conv2d):
            ok = all(_is_one(getattr(projection, a)) for a in ("kernel_size", "stride", "dilation"))
            padding = projection.padding
            ok = ok and projection.groups == 1 and padding in ("valid", (0,), (0, 0))
            require(
                ok,
                where,
                projection,
                "these options",
                "the grammar's is a 1x1 convolution, stride 1, no padding",
            )
        elif type(projection) is not nn.Linear:
            raise UnsupportedModule(
                where, f"{describe(projection)} is neither nn.Linear nor a 1x1 conv"
            )
        require(
            projection.bias is not None,
            where,
            projection,
            "bias=False",
            "the grammar's projection has a bias",
        )
        names += same_names(projection, where, "projection")
    spec: Spec = {"type": "residual", "body": [layer.spec for layer in body]}
    if projection is not None:
        # `true` where the rank's rule picks it (linear for (N, F), a 1x1 conv above).
        kind = "linear" if type(projection) is nn.Linear else "conv"
        default = "linear" if trace.entry(m, path)[0].dim() == 2 else "conv"
        spec["projection"] = True if kind == default else kind
        return pick(path, m, trace, [make_layer(path, m, spec, names)], "residual")
    candidates = [
        make_layer(path, m, spec | {"merge": merge}, names) for merge in ("add", "concat")
    ]
    return pick(path, m, trace, candidates, "add and concat")


def _is_one(values: Any) -> bool:
    return set(values if isinstance(values, tuple) else (values,)) == {1}


# the walk ------------------------------------------------------------------------------------
def _container(m: nn.Module, path: str, trace: Trace) -> list[Layer]:
    if own_tensors(m):
        raise UnsupportedModule(path, f"{describe(m)} holds tensors of its own: {own_tensors(m)}")
    layers = [
        layer
        for name, child in m.named_children()
        for layer in convert(child, join(path, name), trace)
    ]
    if trace.called(m) and layers:  # a container without a forward of its own is not
        why = layers_mismatch(layers, trace, m, path)
        if why:
            raise UnsupportedModule(
                path,
                f"{describe(m)} computes something other than its children in "
                f"registration order ({why}); functional calls in forward (F.relu, x + ...) "
                "are not in the grammar: use modules, Residual(body, projection) for shortcuts",
            )
    return layers


def convert(m: nn.Module, path: str, trace: Trace) -> list[Layer]:
    """The layers a module stands for, in order."""
    cls = type(m)
    if cls in LEAVES:
        return [make_layer(path, m, LEAVES[cls](m, path), same_names(m, path, buffers=True))]
    if cls in (nn.Sequential, nn.ModuleList):
        return [
            layer
            for name, child in m.named_children()
            for layer in convert(child, join(path, name), trace)
        ]
    if is_torch_class(m):
        raise not_in_grammar(path, m)
    children = {name for name, _ in m.named_children()}
    if is_course_norm(m):
        return [course_norm(m, path, trace)]
    if set(PROJECTIONS) <= children:
        return [attention(m, path, trace)]
    if {"att", "ff"} <= children:
        return [transformer_block(m, path, trace)]
    if "body" in children and children <= {"body", "projection"}:
        return [_residual(m, path, trace)]
    if children:
        return _container(m, path, trace)
    name = activation_name(m, path)
    if name is None:
        raise not_in_grammar(path, m)
    return [make_layer(path, m, {"type": name}, ())]
