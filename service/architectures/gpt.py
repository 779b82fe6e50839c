"""The `gpt` kind: the course's GPTModel on token ids, next-token logits (b, T, vocab)."""

from torch import nn

from service.architectures.base import Estimate, ModelKind, ModelSignature, Shape
from service.architectures.init_schemes import InitUnit
from service.architectures.layers import attention_estimate
from service.architectures.modules import GPTModel
from service.errors import Loc, ShapeMismatch
from service.schemas.models import GPTSpec


def signature(spec: GPTSpec, input_shape: Shape, loc: Loc) -> ModelSignature:
    cfg = spec.config()
    if cfg["emb_dim"] % cfg["n_heads"]:
        raise ShapeMismatch.at(
            (*loc, "model", "n_heads"),
            f"n_heads={cfg['n_heads']} does not divide emb_dim={cfg['emb_dim']}",
        )
    if len(input_shape) != 2:
        hint = ": wrap a single sequence as [[...]]" if len(input_shape) == 1 else ""
        raise ShapeMismatch.at(
            (*loc, "input"),
            f"input has shape {list(input_shape)}; a gpt takes token ids of shape "
            f"(batch, tokens){hint}",
        )
    batch, tokens = input_shape
    if tokens > cfg["context_length"]:
        raise ShapeMismatch.at(
            (*loc, "input"),
            f"{tokens} tokens exceed the context length {cfg['context_length']}",
        )
    emb, vocab = cfg["emb_dim"], cfg["vocab_size"]
    block = attention_estimate((batch, tokens, emb), cfg["n_heads"], cfg["qkv_bias"], ff_mult=4)
    embeddings = Estimate((vocab + cfg["context_length"]) * emb, 2 * batch * tokens * emb, 0, 0)
    head = Estimate(
        vocab * emb + 2 * emb,
        2 * batch * tokens * (vocab + emb),
        6 * batch * tokens * emb * vocab,
        0,
    )
    blocks = (block + Estimate(output_elements=batch * tokens * emb)) * cfg["n_layers"]
    estimate = embeddings + blocks + head
    output = (batch, tokens, vocab)
    return ModelSignature("int", output, estimate, input_classes=vocab, class_dim=-1)


def build(spec: GPTSpec, input_shape: Shape) -> nn.Module:
    return GPTModel(**spec.config(), norm=spec.norm, shortcut=spec.shortcut)


def layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer blocks: the last block, not the vocabulary head, is the reference."""
    assert isinstance(module, GPTModel)
    return [(f"trf_blocks.{i}", block) for i, block in enumerate(module.trf_blocks)]


def init_units(spec: GPTSpec, module: nn.Module) -> list[InitUnit]:
    """tok_emb, pos_emb, each block as a whole (weights, then biases), final_norm, out_head:
    the model's `init` only."""
    assert isinstance(module, GPTModel)
    parts = [module.tok_emb, module.pos_emb, *module.trf_blocks, module.final_norm, module.out_head]
    return [InitUnit((), part) for part in parts]


GPT_KIND = ModelKind(signature=signature, build=build, layers=layers, init_units=init_units)
