"""Layers on token sequences (N, T, D): the learned positional embedding, and PyTorch's
nn.MultiheadAttention as the `torch` layout of the `attention` layer.

Both draw their initial weights from the run's generator, in the order and with the
distributions of PyTorch's own construction (service/architectures/init.py).
"""

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn import init
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from service.architectures.base import Estimate, Shape
from service.architectures.init import SeededInit
from service.architectures.layer_rules import LayerType, fail, need_dims
from service.errors import Loc


class PositionalEmbedding(nn.Module, SeededInit):
    """x + weight[arange(T)]: nn.Embedding(max_length, D) on the positions, added to the
    input as the course's GPT adds pos_emb to tok_emb; `weight` is drawn as nn.Embedding's."""

    def __init__(self, max_length: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_length, dim))

    def reset_seeded(self, generator: torch.Generator) -> None:
        with torch.no_grad():
            self.weight.normal_(generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        return x + F.embedding(positions, self.weight)


def _positional_infer(spec: Any, shape: Shape, loc: Loc) -> tuple[Shape, Estimate]:
    need_dims(spec, shape, loc, (3,), "(N, T, D)")
    if shape[1] > spec.max_length:
        raise fail(loc, spec, shape, f"{shape[1]} tokens exceed max_length={spec.max_length}")
    n = math.prod(shape)
    # The sum, and the positions that the embedding's backward keeps.
    return shape, Estimate(spec.max_length * shape[2], n + shape[1], 3 * n, 1)


class _OutProjection(NonDynamicallyQuantizableLinear, SeededInit):
    """TorchAttention's out_proj: drawn by its attention, in nn.MultiheadAttention's order."""

    def reset_seeded(self, generator: torch.Generator) -> None:
        pass


class TorchAttention(nn.MultiheadAttention, SeededInit):
    """nn.MultiheadAttention(dim, heads, bias=bias, batch_first=True) as self-attention that
    returns its output only; causal by a boolean attn_mask (True above the diagonal)."""

    def __init__(self, dim: int, heads: int, bias: bool, causal: bool):
        super().__init__(dim, heads, bias=bias, batch_first=True)
        self.out_proj = _OutProjection(dim, dim, bias=bias)  # the same nn.Linear, drawn here
        self.causal = causal

    def reset_seeded(self, generator: torch.Generator) -> None:
        # Construction draws out_proj's nn.Linear init, then _reset_parameters draws
        # in_proj_weight (Xavier uniform) and zeroes both biases.
        with torch.no_grad():
            out = self.out_proj
            init.kaiming_uniform_(out.weight, a=math.sqrt(5), generator=generator)
            if out.bias is not None:
                bound = 1 / math.sqrt(out.in_features)
                init.uniform_(out.bias, -bound, bound, generator=generator)
            init.xavier_uniform_(self.in_proj_weight, generator=generator)
            if self.in_proj_bias is not None:
                self.in_proj_bias.zero_()
                out.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        t = x.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1) if self.causal else None
        return super().forward(x, x, x, need_weights=False, attn_mask=mask)[0]


SEQUENCE_LAYERS: dict[str, LayerType] = {
    "positional_embedding": LayerType(
        _positional_infer, lambda s, shape: PositionalEmbedding(s.max_length, shape[2])
    ),
}
