"""`spec_from_module`: a `sequential`, `mlp` or `gpt` spec from the user's own PyTorch module.

The spec reproduces the module's architecture, not its weights: the service draws those from
the request's seed (the module's own, when it was built right after `torch.manual_seed(seed)`
in the service's construction order). Every spec is checked before it is returned: the
service's schema accepts it, the service's shape rules give the module's output shape on the
example input, and the service's model, holding the module's tensors, computes the module's
output on it (eval mode). What the grammar cannot express is refused with UnsupportedModule,
whose message starts with the module's path.
"""

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import TypeAdapter, ValidationError
from torch import nn

from service.architectures.registry import MODEL_KINDS
from service.client.spec_check import (
    Trace,
    UnsupportedModule,
    describe,
    join,
    mismatch,
    own_tensors,
    record,
    validation_summary,
)
from service.client.spec_layers import LEAVES, activation_spec, dropout_p, require
from service.client.spec_parts import Names, norm_names, transformer_block
from service.client.spec_tree import convert
from service.errors import ShapeMismatch
from service.schemas.models import ModelSpec

__all__ = ["DerivedSpec", "UnsupportedModule", "derive_spec", "spec_from_module"]

MODEL_SPEC: TypeAdapter[Any] = TypeAdapter(ModelSpec)
Candidate = tuple[dict[str, Any], Names]  # a model spec and its tensors' pairing


@dataclass(frozen=True)
class DerivedSpec:
    spec: dict[str, Any]  # JSON-ready, as the service's schema writes it (defaults left out)
    names: dict[str, str]  # the service's parameter name -> the module's, in the service's order


def spec_from_module(module: nn.Module, example_input: torch.Tensor) -> dict[str, Any]:
    """The model spec of `module`, checked on `example_input` (a batch: floats, or token ids
    for an embedding first or a GPT). Raises UnsupportedModule for what the grammar lacks."""
    return derive_spec(module, example_input).spec


def derive_spec(module: nn.Module, example_input: torch.Tensor) -> DerivedSpec:
    """`spec_from_module`, with the pairing of the service's parameter names to the module's."""
    with torch.random.fork_rng(devices=[]):  # the caller's dropout stream stays where it was
        trace = record(module, example_input)
        candidates = _candidates(module, trace)
        why: str | None = ""
        for spec, names in candidates:
            model, why = _check(spec, dict(names), trace, module)
            if why is None:
                return DerivedSpec(
                    model.model_dump(mode="json", exclude_defaults=True),
                    _parameter_pairs(model, dict(names), tuple(example_input.shape)),
                )
    kind = candidates[0][0]["kind"]
    raise UnsupportedModule(
        "",
        f"the derived {kind} spec does not reproduce the module's output on example_input "
        f"({why}): its forward does more than the grammar expresses",
    )


def _parameter_pairs(model: Any, names: dict[str, str], shape: tuple[int, ...]) -> dict[str, str]:
    """`names` restricted to parameters (no buffers), in the service's parameter order."""
    with torch.device("meta"):  # no memory, no random draws
        built = MODEL_KINDS[model.kind].build(model, shape)
    return {name: names[name] for name, _ in built.named_parameters()}


def _check(
    spec: dict[str, Any], names: dict[str, str], trace: Trace, module: nn.Module
) -> tuple[Any, str | None]:
    """The validated spec, and why it does not reproduce the module (None: it does)."""
    try:
        model = MODEL_SPEC.validate_python(spec)
    except ValidationError as error:
        message = f"the service refuses the derived spec {spec}: {validation_summary(error)}"
        raise UnsupportedModule("", message) from None
    entry = trace.entry(module, "")
    kind, shape = MODEL_KINDS[spec["kind"]], tuple(entry[0].shape)
    try:
        signature = kind.signature(model, shape, ())
    except ShapeMismatch as error:
        raise UnsupportedModule(
            "", f"the service refuses the derived spec: {error.detail}"
        ) from None
    if signature.output_shape != tuple(entry[1].shape):
        inferred, actual = list(signature.output_shape), list(entry[1].shape)
        return model, f"the service infers the output shape {inferred}, the module gives {actual}"
    return model, mismatch(lambda: kind.build(model, shape), names, trace, entry)


def _candidates(module: nn.Module, trace: Trace) -> list[Candidate]:
    children = {name for name, _ in module.named_children()}
    if children == set(_GPT_PARTS):
        return [_gpt(module, trace)]
    mlp = _mlp(module)
    if mlp:
        return mlp
    layers = convert(module, "", trace)
    if not layers:
        raise UnsupportedModule("", f"{describe(module)} has no layers")
    names = tuple(
        (join(f"layers.{i}", s), u) for i, layer in enumerate(layers) for s, u in layer.names
    )
    return [({"kind": "sequential", "layers": [layer.spec for layer in layers]}, names)]


# the lesson's network ------------------------------------------------------------------------
def _mlp(module: nn.Module) -> list[Candidate]:
    """ExampleDeepNeuralNetwork's shape, `layers` = ModuleList of Sequential(Linear, activation):
    both shortcut settings, the module's `use_shortcut` first ([] for another shape)."""
    parts: dict[str, Any] = dict(module.named_children())
    blocks = parts.get("layers")
    if set(parts) != {"layers"} or type(blocks) is not nn.ModuleList or own_tensors(module):
        return []
    sizes: list[int] = []
    activations: set[str | None] = set()
    biases: set[bool] = set()
    names: list[tuple[str, str]] = []
    for i, block in enumerate(blocks):
        pairs: list[tuple[str, Any]] = []
        if type(block) is nn.Sequential:
            pairs = list(block.named_children())
        if len(pairs) != 2 or type(pairs[0][1]) is not nn.Linear:
            return []
        (linear_name, linear), (act_name, act) = pairs
        if sizes and sizes[-1] != linear.in_features:
            return []
        sizes = sizes or [linear.in_features]
        sizes.append(linear.out_features)
        act_spec = activation_spec(act, f"layers.{i}.{act_name}")
        # The mlp kind names its activation: options other than PyTorch's make it sequential.
        activations.add(act_spec["type"] if act_spec is not None and len(act_spec) == 1 else None)
        biases.add(linear.bias is not None)
        names += [
            (f"layers.{i}.0.{n}", f"layers.{i}.{linear_name}.{n}")
            for n, _ in linear.named_parameters()
        ]
    if len(activations) != 1 or None in activations or len(biases) != 1:
        return []
    shortcuts = sorted((False, True), key=lambda s: s != getattr(module, "use_shortcut", None))
    base = {
        "kind": "mlp",
        "layer_sizes": sizes,
        "activation": activations.pop(),
        "bias": biases.pop(),
    }
    return [(base | {"shortcut": s}, tuple(names)) for s in shortcuts]


# the course's GPTModel -----------------------------------------------------------------------
_GPT_PARTS = ("tok_emb", "pos_emb", "drop_emb", "trf_blocks", "final_norm", "out_head")


def _gpt(module: nn.Module, trace: Trace) -> Candidate:
    parts: dict[str, Any] = dict(module.named_children())
    if own_tensors(module):
        raise UnsupportedModule("", f"{describe(module)} holds tensors of its own")
    tok, pos, head = parts["tok_emb"], parts["pos_emb"], parts["out_head"]
    for name, embedding in (("tok_emb", tok), ("pos_emb", pos)):
        if type(embedding) is not nn.Embedding:
            raise UnsupportedModule(name, f"{describe(embedding)} is not nn.Embedding")
        LEAVES[nn.Embedding](embedding, name)  # its options
        padding = embedding.padding_idx
        require(padding is None, name, embedding, f"padding_idx={padding}", "the gpt has none")
    vocab, emb = tok.num_embeddings, tok.embedding_dim
    require(
        pos.embedding_dim == emb,
        "pos_emb",
        pos,
        f"width {pos.embedding_dim}",
        f"tok_emb's width is {emb}",
    )
    ok = type(head) is nn.Linear and (head.in_features, head.out_features) == (emb, vocab)
    require(
        ok,
        "out_head",
        head,
        "this shape",
        f"the gpt's head is nn.Linear({emb}, {vocab}, bias=False)",
    )
    require(head.bias is None, "out_head", head, "a bias", "the grammar's gpt head has none")
    blocks = parts["trf_blocks"]
    if type(blocks) not in (nn.Sequential, nn.ModuleList) or not len(blocks):
        raise UnsupportedModule(
            "trf_blocks", f"{describe(blocks)} is not an nn.Sequential of blocks"
        )
    layers = [transformer_block(b, f"trf_blocks.{i}", trace) for i, b in enumerate(blocks)]
    block = layers[0].spec
    for i, layer in enumerate(layers):
        differs = {k: v for k, v in layer.spec.items() if block[k] != v}
        require(
            not differs,
            f"trf_blocks.{i}",
            blocks[i],
            f"{differs}",
            f"a gpt's blocks are all alike, as trf_blocks.0: {block}",
        )
    where = "trf_blocks.0"
    require(
        block["ff_mult"] == 4,
        where,
        blocks[0],
        f"ff_mult {block['ff_mult']}",
        "the grammar's gpt has 4",
    )
    require(
        block["causal"], where, blocks[0], "non-causal attention", "the grammar's gpt is causal"
    )
    drop = dropout_p(parts["drop_emb"], "drop_emb")
    require(
        drop == block["dropout"],
        "drop_emb",
        parts["drop_emb"],
        f"p={drop}",
        f"the grammar's gpt has one rate, the blocks' {block['dropout']}",
    )
    names: Names = (("tok_emb.weight", "tok_emb.weight"), ("pos_emb.weight", "pos_emb.weight"))
    names += tuple(
        (join(f"trf_blocks.{i}", s), u) for i, layer in enumerate(layers) for s, u in layer.names
    )
    final = parts["final_norm"]
    if block["norm"] == "none":
        require(
            type(final) is nn.Identity,
            "final_norm",
            final,
            "blocks without norms",
            "the grammar's gpt then has nn.Identity",
        )
    else:
        eps, found = norm_names(final, "final_norm", ("final_norm.scale", "final_norm.shift"))
        require(eps == 1e-5, "final_norm", final, f"eps={eps}", "the grammar's gpt has 1e-5")
        names += found
    names += (("out_head.weight", "out_head.weight"),)
    spec = {
        "kind": "gpt",
        "vocab_size": vocab,
        "context_length": pos.num_embeddings,
        "emb_dim": emb,
        "n_heads": block["heads"],
        "n_layers": len(layers),
        "drop_rate": drop,
        "qkv_bias": block["qkv_bias"],
        "shortcut": block["shortcut"],
        "norm": block["norm"],
    }
    return spec, names
