"""The course's building blocks (LLMs-from-scratch, chapter 4), with two changes only:

- dropout draws its masks from a per-run generator (`SeededDropout`) instead of the global
  one, so that concurrent runs stay deterministic; the masks are bit-identical to those
  `nn.Dropout` draws on the same device after `torch.manual_seed(seed)`;
- the transformer block takes the diagnostics switches `norm` (pre | post | none) and
  `shortcut`; `pre` with shortcuts is the course's block.

The causal mask is computed per call rather than stored as a buffer: same mask, no state.
"""

import torch
from torch import nn
from torch.nn import functional as F

from service.architectures.activations import GELUTanh
from service.architectures.init import SeededInit


class SeededDropout(nn.Module):
    """nn.Dropout's algorithm on a given generator: on the CPU, Bernoulli(1-p) noise scaled by
    1/(1-p); on CUDA, the fused Philox kernel that nn.Dropout calls there."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None  # set per run
        # Draw the masks as in this dtype: the precision check's float64 pass replays the
        # run dtype's masks (the CPU's draws do not depend on the dtype; CUDA's fused kernel
        # vectorises by element size, so its may).
        self.mask_dtype: torch.dtype | None = None
        # Per-sample gradients replay a run's masks: kept, in call order, while `recorded` is
        # a list; applied instead of new draws while `replay` holds some.
        self.recorded: list[torch.Tensor] | None = None
        self.replay: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.replay:
            return x * self.replay.pop(0)
        if self.generator is None:
            raise RuntimeError(f"{type(self).__name__} used without a generator")
        fused = self.generator.device.type == "cuda" and type(self) is SeededDropout
        if fused and (self.mask_dtype or x.dtype) == x.dtype:
            # nn.Dropout's own CUDA kernel (`_fused_dropout` takes the probability to keep).
            out, mask = torch._fused_dropout(x, 1 - self.p, self.generator)
            if self.recorded is not None:
                self.recorded.append(mask.to(x.dtype) / (1 - self.p))
            return out
        noise = self.noise(x, self.mask_dtype or x.dtype)
        if self.recorded is not None:
            self.recorded.append(noise)
        return x * noise

    def noise(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The scaled mask for `x`, drawn as in `dtype`: on CUDA by nn.Dropout's kernel,
        elsewhere on the CPU (other devices, mps, get the CPU's masks, moved)."""
        assert self.generator is not None
        if self.generator.device.type == "cuda":
            ones = torch.ones_like(x, dtype=dtype)
            mask = torch._fused_dropout(ones, 1 - self.p, self.generator)[1]
            return mask.to(x.dtype) / (1 - self.p)
        noise = torch.empty_like(x, dtype=dtype, device="cpu")
        noise.bernoulli_(1 - self.p, generator=self.generator)
        return noise.to(x.dtype).div_(1 - self.p).to(x.device)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ChannelDropout(SeededDropout):
    """nn.Dropout1d / nn.Dropout2d on a given generator: whole channels zeroed, by PyTorch's
    feature dropout: Bernoulli(1-p) noise of shape (N, C, 1, ...), scaled by 1/(1-p)."""

    def __init__(self, p: float, spatial: int):
        super().__init__(p)
        self.spatial = spatial  # 1: Dropout1d on (N, C, L); 2: Dropout2d on (N, C, H, W)

    def noise(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # CUDA draws on its own generator, as there; other devices (mps) draw on the CPU.
        assert self.generator is not None
        cuda = self.generator.device.type == "cuda"
        shape = (*x.shape[:2], *(1,) * (x.dim() - 2))
        noise = torch.empty(shape, dtype=dtype, device=self.generator.device if cuda else "cpu")
        noise.bernoulli_(1 - self.p, generator=self.generator)
        return noise.to(x.dtype).div_(1 - self.p).to(x.device)

    def extra_repr(self) -> str:
        return f"p={self.p}, spatial={self.spatial}"


class LayerNorm(nn.Module, SeededInit):
    """The course's LayerNorm: parameters `scale` (ones) and `shift` (zeros), biased variance."""

    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def reset_seeded(self, generator: torch.Generator) -> None:
        with torch.no_grad():
            self.scale.fill_(1.0)
            self.shift.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        norm_x = (x - mean) / torch.sqrt(var + self.eps)
        return self.scale * norm_x + self.shift


class MultiHeadAttention(nn.Module):
    """Self-attention: W_query, W_key, W_value, softmax(QKᵀ/√head_dim), dropout, out_proj."""

    def __init__(
        self, d_in: int, d_out: int, num_heads: int, dropout: float, qkv_bias: bool, causal: bool
    ):
        super().__init__()
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.causal = causal
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = SeededDropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, num_tokens, _ = x.shape
        keys = self.W_key(x)
        queries = self.W_query(x)
        values = self.W_value(x)
        # (b, T, d_out) -> (b, heads, T, head_dim)
        keys = keys.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        queries = queries.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        values = values.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        attn_scores = queries @ keys.transpose(2, 3)  # (b, heads, T, T)
        if self.causal:
            mask = torch.ones(num_tokens, num_tokens, dtype=torch.bool, device=x.device).triu(1)
            attn_scores.masked_fill_(mask, -torch.inf)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        attn_weights = self.dropout(attn_weights)
        context = (attn_weights @ values).transpose(1, 2)  # (b, T, heads, head_dim)
        context = context.contiguous().view(b, num_tokens, self.d_out)
        return self.out_proj(context)


class FeedForward(nn.Module):
    """Linear(emb, mult·emb), tanh GELU, Linear(mult·emb, emb)."""

    def __init__(self, emb_dim: int, mult: int = 4):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(emb_dim, mult * emb_dim), GELUTanh(), nn.Linear(mult * emb_dim, emb_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TransformerBlock(nn.Module):
    """att, ff, norm1, norm2, drop_shortcut, built in that order (norms omitted for `none`).

    pre:  x = x + drop(att(norm1(x)));  x = x + drop(ff(norm2(x)))      (the course's)
    post: x = norm1(x + drop(att(x)));  x = norm2(x + drop(ff(x)))
    none: x = x + drop(att(x));         x = x + drop(ff(x))
    Without `shortcut` the `x +` terms are dropped.
    """

    def __init__(
        self,
        emb_dim: int,
        n_heads: int,
        drop_rate: float,
        qkv_bias: bool,
        *,
        ff_mult: int = 4,
        norm: str = "pre",
        shortcut: bool = True,
        causal: bool = True,
    ):
        super().__init__()
        self.norm = norm
        self.shortcut = shortcut
        self.att = MultiHeadAttention(emb_dim, emb_dim, n_heads, drop_rate, qkv_bias, causal)
        self.ff = FeedForward(emb_dim, ff_mult)
        if norm != "none":
            self.norm1 = LayerNorm(emb_dim)
            self.norm2 = LayerNorm(emb_dim)
        self.drop_shortcut = SeededDropout(drop_rate)

    def _sublayer(self, x: torch.Tensor, branch: nn.Module, norm_name: str) -> torch.Tensor:
        norm: nn.Module | None = getattr(self, norm_name, None)
        out = self.drop_shortcut(branch(norm(x) if norm is not None and self.norm == "pre" else x))
        if self.shortcut:
            out = out + x
        return norm(out) if norm is not None and self.norm == "post" else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._sublayer(x, self.att, "norm1")
        return self._sublayer(x, self.ff, "norm2")


class GPTModel(nn.Module):
    """tok_emb, pos_emb, drop_emb, trf_blocks, final_norm, out_head (no bias)."""

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        emb_dim: int,
        n_heads: int,
        n_layers: int,
        drop_rate: float,
        qkv_bias: bool,
        *,
        norm: str = "pre",
        shortcut: bool = True,
    ):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, emb_dim)
        self.pos_emb = nn.Embedding(context_length, emb_dim)
        self.drop_emb = SeededDropout(drop_rate)
        self.trf_blocks = nn.Sequential(
            *(
                TransformerBlock(
                    emb_dim, n_heads, drop_rate, qkv_bias, norm=norm, shortcut=shortcut
                )
                for _ in range(n_layers)
            )
        )
        self.final_norm = LayerNorm(emb_dim) if norm != "none" else nn.Identity()
        self.out_head = nn.Linear(emb_dim, vocab_size, bias=False)

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        _, seq_len = in_idx.shape
        tok_embeds = self.tok_emb(in_idx)  # (b, T, emb)
        pos_embeds = self.pos_emb(torch.arange(seq_len, device=in_idx.device))
        x = self.drop_emb(tok_embeds + pos_embeds)
        x = self.trf_blocks(x)
        x = self.final_norm(x)
        return self.out_head(x)  # (b, T, vocab)


class Residual(nn.Module):
    """`body(x) + x`, or `body(x) + projection(x)` when the body changes the shape; with
    merge `concat`, torch.cat([body(x), x], dim=1)."""

    def __init__(self, body: list[nn.Module], projection: nn.Module | None, merge: str = "add"):
        super().__init__()
        self.body = nn.Sequential(*body)
        self.projection = projection
        self.merge = merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merge == "concat":
            return torch.cat([self.body(x), x], dim=1)
        shortcut = x if self.projection is None else self.projection(x)
        return self.body(x) + shortcut


class GlobalPool(nn.Module):
    """(N, C, ...) -> (N, C): the mean (`avg`) or the maximum (`max`) of each channel, as
    adaptive pooling to size 1 and a flatten compute it (`max` routes each gradient to one
    maximum of its channel, as adaptive max pooling does)."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "avg":  # adaptive_avg_pool to size 1 computes this mean
            return x.mean(dim=tuple(range(2, x.dim())))
        pool = (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)[x.dim() - 3]
        return pool(x, 1).flatten(1)

    def extra_repr(self) -> str:
        return f"mode={self.mode}"
