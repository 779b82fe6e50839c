"""The course's LayerNorm, MultiHeadAttention and TransformerBlock -> layer specs.

They are recognised by their parts (W_query, ..., att, ff, norm1, ...), and what their forward
leaves open (causal or not, pre- or post-norm, shortcuts) is read off their output on the
example input: each candidate spec is built with the module's own tensors, and the first that
reproduces the output is kept.
"""

from dataclasses import dataclass
from itertools import product
from typing import Any

from pydantic import ValidationError
from torch import nn

from service.architectures.layers import build_layers
from service.client.spec_check import (
    LAYER_SPEC,
    Trace,
    UnsupportedModule,
    describe,
    join,
    mismatch,
    own_tensors,
    validation_summary,
)
from service.client.spec_layers import (
    Spec,
    activation_name,
    dropout_p,
    require,
)

Names = tuple[tuple[str, str], ...]  # (name in the service's layer, full name in the module)


@dataclass(frozen=True)
class Layer:
    """One layer spec, and which of the module's tensors its own are."""

    spec: Spec
    names: Names


def same_names(module: nn.Module, path: str, ours: str = "", buffers: bool = False) -> Names:
    """The module's tensors under the same names in the service's layer (prefixed `ours`)."""
    found = list(module.named_parameters()) + (list(module.named_buffers()) if buffers else [])
    return tuple((join(ours, n), join(path, n)) for n, _ in found)


def make_layer(path: str, module: nn.Module, spec: Spec, names: Names) -> Layer:
    try:
        LAYER_SPEC.validate_python(spec)
    except ValidationError as error:
        raise UnsupportedModule(
            path,
            f"{describe(module)} maps to {spec}, which the grammar refuses: "
            f"{validation_summary(error)}",
        ) from None
    return Layer(spec, names)


def layers_mismatch(layers: list[Layer], trace: Trace, module: nn.Module, path: str) -> str | None:
    """Why the layers, in order, do not compute what `module` computed (None: they do)."""
    entry = trace.entry(module, path)
    specs = [LAYER_SPEC.validate_python(layer.spec) for layer in layers]
    names = {join(str(i), s): u for i, layer in enumerate(layers) for s, u in layer.names}
    shape = tuple(entry[0].shape)
    return mismatch(lambda: nn.Sequential(*build_layers(specs, shape)[0]), names, trace, entry)


def pick(path: str, module: nn.Module, trace: Trace, candidates: list[Layer], tried: str) -> Layer:
    """The first candidate that reproduces the module's output on the example input."""
    why = ""
    for candidate in candidates:
        why = layers_mismatch([candidate], trace, module, path) or ""
        if not why:
            return candidate
    kind = candidates[0].spec["type"]
    raise UnsupportedModule(
        path,
        f"{describe(module)} has the parts of the grammar's {kind} but computes something "
        f"else on example_input ({why}; tried {tried})",
    )


def _hinted(values: tuple[Any, ...], module: nn.Module, *attributes: str) -> tuple[Any, ...]:
    """`values` with the one the module's attributes name first (ties on an ambiguous input)."""
    hint = next((getattr(module, a) for a in attributes if hasattr(module, a)), None)
    return tuple(sorted(values, key=lambda v: v != hint))


def children_of(
    module: nn.Module, path: str, allowed: set[str], what: str, buffers: bool = False
) -> dict[str, Any]:
    """The module's children, refusing others than `allowed` and tensors of its own (buffers
    too unless `buffers`: the course's attention keeps its causal mask in one)."""
    children = dict(module.named_children())
    own = [n for n, _ in module.named_parameters(recurse=False)] if buffers else own_tensors(module)
    extra = sorted(set(children) - allowed) + own
    if extra:
        raise UnsupportedModule(path, f"{describe(module)} has {extra} besides {what}")
    return children


# the course's LayerNorm ----------------------------------------------------------------------
def is_course_norm(m: nn.Module) -> bool:
    shapes = {n: p.dim() for n, p in m.named_parameters()}
    return shapes == {"scale": 1, "shift": 1} and not any(True for _ in m.children())


def norm_names(m: nn.Module, path: str, ours: tuple[str, str]) -> tuple[float, Names]:
    """A LayerNorm with scale and shift (the course's, or nn.LayerNorm's weight and bias):
    its eps and its tensors under the names `ours`."""
    if is_course_norm(m):
        theirs = ("scale", "shift")
    elif type(m) is nn.LayerNorm and m.elementwise_affine and m.bias is not None:
        theirs = ("weight", "bias")
    else:
        raise UnsupportedModule(path, f"{describe(m)} is not a LayerNorm with scale and shift")
    eps = getattr(m, "eps", None)
    if not isinstance(eps, float):
        raise UnsupportedModule(path, f"{describe(m)} has no float `eps`")
    return eps, tuple((o, join(path, t)) for o, t in zip(ours, theirs, strict=True))


def course_norm(m: nn.Module, path: str, trace: Trace) -> Layer:
    eps, names = norm_names(m, path, ("weight", "bias"))
    candidate = make_layer(path, m, {"type": "layer_norm", "eps": eps}, names)
    return pick(path, m, trace, [candidate], "layer_norm")


# attention and transformer blocks ------------------------------------------------------------
PROJECTIONS = ("W_query", "W_key", "W_value", "out_proj")


def _attention_fields(m: nn.Module, path: str) -> tuple[Spec, Names]:
    allowed = {*PROJECTIONS, "dropout"}
    parts = children_of(m, path, allowed, "W_query, W_key, W_value, out_proj", buffers=True)
    linears = [parts[name] for name in PROJECTIONS]
    for name, linear in zip(PROJECTIONS, linears, strict=True):
        if type(linear) is not nn.Linear:
            raise UnsupportedModule(join(path, name), f"{describe(linear)} is not nn.Linear")
    width = linears[0].in_features
    for name, linear in zip(PROJECTIONS, linears, strict=True):
        shape = (linear.in_features, linear.out_features)
        ok = shape == (width, width)
        require(
            ok,
            join(path, name),
            linear,
            f"shape {shape}",
            f"the grammar's attention keeps the width {width}",
        )
    biases = {linear.bias is not None for linear in linears[:3]}
    require(
        len(biases) == 1,
        path,
        m,
        "biases on some of W_query, W_key, W_value",
        "the grammar has all or none",
    )
    require(
        linears[3].bias is not None, path, m, "no out_proj bias", "the grammar's out_proj has one"
    )
    heads = getattr(m, "num_heads", None)
    if not isinstance(heads, int):
        raise UnsupportedModule(path, f"{describe(m)} has no int `num_heads`")
    p = dropout_p(parts.get("dropout"), join(path, "dropout"))
    spec = {"heads": heads, "qkv_bias": biases.pop(), "dropout": p}
    return spec, same_names(m, path)


def attention(m: nn.Module, path: str, trace: Trace) -> Layer:
    fields, names = _attention_fields(m, path)
    causal = _hinted((True, False), m, "causal")
    candidates = [
        make_layer(path, m, {"type": "attention", **fields, "causal": c}, names) for c in causal
    ]
    return pick(path, m, trace, candidates, "causal and not")


def _feed_forward(ff: Any, path: str, width: int) -> tuple[int, Names]:
    """Linear(D, k·D), tanh GELU, Linear(k·D, D), as an nn.Sequential or in one (`layers`)."""
    seq, seq_path = ff, path
    if type(ff) is not nn.Sequential:
        seq = children_of(ff, path, {"layers"}, "layers").get("layers")
        seq_path = join(path, "layers")
    parts: list[tuple[str, Any]] = list(seq.named_children()) if type(seq) is nn.Sequential else []
    kinds = [type(part) for _, part in parts]
    if len(parts) != 3 or kinds[0] is not nn.Linear or kinds[2] is not nn.Linear:
        raise UnsupportedModule(path, f"{describe(ff)} is not Linear(D, k·D), GELU, Linear(k·D, D)")
    (first_name, first), (act_name, act), (last_name, last) = parts
    hidden = first.out_features
    shapes = (first.in_features, hidden, last.in_features, last.out_features)
    ok = shapes == (width, hidden, hidden, width) and hidden % width == 0
    require(
        ok, path, ff, f"widths {shapes}", f"Linear({width}, k·{width}), Linear(k·{width}, {width})"
    )
    both = first.bias is not None and last.bias is not None
    require(both, path, ff, "a linear without bias", "the grammar's feed-forward has biases")
    name = activation_name(act, join(seq_path, act_name))
    require(
        name == "gelu_tanh",
        join(seq_path, act_name),
        act,
        f"activation {name}",
        "the grammar's block has the tanh GELU",
    )
    names = (
        ("ff.layers.0.weight", join(seq_path, f"{first_name}.weight")),
        ("ff.layers.0.bias", join(seq_path, f"{first_name}.bias")),
        ("ff.layers.2.weight", join(seq_path, f"{last_name}.weight")),
        ("ff.layers.2.bias", join(seq_path, f"{last_name}.bias")),
    )
    return hidden // width, names


def transformer_block(m: nn.Module, path: str, trace: Trace) -> Layer:
    allowed = {"att", "ff", "norm1", "norm2", "drop_shortcut"}
    parts = children_of(m, path, allowed, "att, ff, norm1, norm2, drop_shortcut")
    if not {"att", "ff"} <= set(parts):
        raise UnsupportedModule(path, f"{describe(m)} is not a block with att and ff")
    att_path = join(path, "att")
    fields, att_names = _attention_fields(parts["att"], att_path)
    names = tuple((join("att", s), u) for s, u in att_names)
    ff_mult, ff_names = _feed_forward(
        parts["ff"], join(path, "ff"), parts["att"].W_query.in_features
    )
    names += ff_names
    norms: list[Any] = [parts.get("norm1"), parts.get("norm2")]
    require(
        (norms[0] is None) == (norms[1] is None),
        path,
        m,
        "one norm",
        "the grammar's block has both or none",
    )
    for i, norm in enumerate(norms if norms[0] is not None else [], 1):
        eps, found = norm_names(norm, join(path, f"norm{i}"), (f"norm{i}.scale", f"norm{i}.shift"))
        require(
            eps == 1e-5, join(path, f"norm{i}"), norm, f"eps={eps}", "the grammar's block has 1e-5"
        )
        names += found
    drop = dropout_p(parts.get("drop_shortcut"), join(path, "drop_shortcut"))
    rates = f"dropout {fields['dropout']} and drop_shortcut {drop}"
    require(drop == fields["dropout"], path, m, rates, "the grammar has one rate per block")
    modes = _hinted(("pre", "post"), m, "norm", "mode") if norms[0] is not None else ("none",)
    variants = product(
        modes,
        _hinted((True, False), m, "shortcut", "use_shortcut"),
        _hinted((True, False), parts["att"], "causal"),
    )
    candidates = [
        make_layer(
            path,
            m,
            {
                "type": "transformer_block",
                **fields,
                "ff_mult": ff_mult,
                "norm": norm,
                "shortcut": shortcut,
                "causal": causal,
            },
            names,
        )
        for norm, shortcut, causal in variants
    ]
    return pick(path, m, trace, candidates, f"norm in {modes}, shortcut or not, causal or not")
