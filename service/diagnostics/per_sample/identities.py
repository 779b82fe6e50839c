"""Per-sample gradients from the batch pass alone: the output-gradient / input identities.

A module applied to each sample on its own has, for sample i, the parameter gradient
g_i = B · J_iᵀ δ_i, where J_i is the module's Jacobian at sample i's input a_i and δ_i the
gradient of the batch loss L = (1/B) Σ ℓ_i with respect to the module's output for that
sample, both recorded by the batch's forward and backward pass (`Recorder`). With δ' = B·δ:

- Linear on (B, in): g_i = δ'_i a_iᵀ, so ‖g_i‖² = ‖δ'_i‖²‖a_i‖², Σ_i g_i² = (δ'²)ᵀ(a²) and
  g_i·ḡ = δ'_iᵀ ḡ a_i, or through the Gram matrices, (1/B) Σ_k (δ'_i·δ'_k)(a_i·a_k), where that
  is cheaper (B·(in+out) < in·out);
- Linear on sequences (B, T, in): g_i = Σ_t δ'_it a_itᵀ, materialised a chunk of samples at a
  time (a batched matmul as costly as the weight gradient's): Σ_i g_i² needs every element;
- Conv1d/Conv2d: the same on the unfolded input (im2col), g_i = Σ_l δ'_il u_ilᵀ;
- Embedding: g_i has a row per distinct token of sample i, the sum of δ'_it over its
  positions;
- LayerNorm (torch's and the course's scale/shift), RMSNorm and BatchNorm in eval mode:
  g_i(scale) = Σ δ'_i ⊙ x̂_i and g_i(shift) = Σ δ'_i over the positions of sample i, x̂ the
  normalised input, recomputed from a_i.

A rule returns the Parts of each of the module's own parameters, or None where it does not
apply (then the parameters go to the vmap path).
"""

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from service.architectures.modules import LayerNorm as CourseLayerNorm
from service.diagnostics.per_sample.parts import Accumulator, Parts, chunk_size, materialised

Rule = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], dict[str, Parts] | None]


def _mean(param: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """ḡ of a parameter: its batch gradient (zeros where none arrived), in `dtype`."""
    assert param is not None
    grad = param.grad
    return torch.zeros_like(param, dtype=dtype) if grad is None else grad.to(dtype)


def _outer(a: torch.Tensor, d: torch.Tensor, mean: torch.Tensor) -> Parts:
    """g_i = d_i a_iᵀ for a: (B, in), d: (B, out); `mean` (out, in)."""
    batch, (n_out, n_in) = len(a), mean.shape
    a_sq, d_sq = a.square(), d.square()
    sq_norms = d_sq.sum(1) * a_sq.sum(1)
    if batch * (n_in + n_out) < n_in * n_out:
        dots = ((d @ d.T) * (a @ a.T)).sum(1) / batch
    else:
        dots = (d * (a @ mean.T)).sum(1)
    return Parts(sq_norms, dots, d_sq.T @ a_sq)


def _sequence(a: torch.Tensor, d: torch.Tensor, mean: torch.Tensor) -> Parts:
    """g_i = Σ_t d_it a_itᵀ for a: (B, T, in), d: (B, T, out), a chunk of samples at a time."""
    accumulator = Accumulator(mean)
    step = chunk_size(len(a), mean.numel())
    for start in range(0, len(a), step):
        chunk = slice(start, start + step)
        accumulator.add(torch.bmm(d[chunk].transpose(1, 2), a[chunk]))
    return accumulator.parts()


def _linear(module: nn.Module, a: torch.Tensor, d: torch.Tensor, batch: int) -> dict[str, Parts]:
    assert isinstance(module, nn.Linear)
    dtype = a.dtype
    a = a.reshape(batch, -1, a.shape[-1])
    d = d.reshape(batch, -1, d.shape[-1])
    mean = _mean(module.weight, dtype)
    rows = a.shape[1]
    parts = {"weight": _outer(a[:, 0], d[:, 0], mean) if rows == 1 else _sequence(a, d, mean)}
    if module.bias is not None:
        parts["bias"] = materialised(d.sum(1), _mean(module.bias, dtype))
    return parts


def _conv(
    module: nn.Module, a: torch.Tensor, d: torch.Tensor, batch: int
) -> dict[str, Parts] | None:
    assert isinstance(module, nn.Conv1d | nn.Conv2d)
    if (
        module.groups != 1
        or isinstance(module.padding, str)
        or module.padding_mode != "zeros"
        or any(x != 1 for x in module.dilation)
    ):
        return None
    dtype = a.dtype
    if isinstance(module, nn.Conv1d):  # unfolded as a (1, k) kernel over a height of 1
        a = a.unsqueeze(2)
        kernel, padding = (1, module.kernel_size[0]), (0, module.padding[0])
        stride = (1, module.stride[0])
    else:
        kernel, padding, stride = module.kernel_size, module.padding, module.stride  # type: ignore[assignment]
    n_out = module.out_channels
    d = d.reshape(batch, n_out, -1)
    mean = _mean(module.weight, dtype)
    columns = module.in_channels * kernel[0] * kernel[1]
    accumulator = Accumulator(mean.reshape(n_out, columns))
    step = chunk_size(batch, columns * d.shape[2] + 2 * n_out * columns)
    for start in range(0, batch, step):
        chunk = slice(start, start + step)
        unfolded = F.unfold(a[chunk], kernel, padding=padding, stride=stride)  # (C, cols, L)
        accumulator.add(torch.bmm(d[chunk], unfolded.transpose(1, 2)))
    weight = accumulator.parts()
    parts = {"weight": Parts(weight.sq_norms, weight.dots, weight.sum_sq.view(mean.shape))}
    if module.bias is not None:
        parts["bias"] = materialised(d.sum(2), _mean(module.bias, dtype))
    return parts


def _embedding(
    module: nn.Module, ids: torch.Tensor, d: torch.Tensor, batch: int
) -> dict[str, Parts] | None:
    assert isinstance(module, nn.Embedding)
    if module.padding_idx is not None or module.max_norm is not None:
        return None
    vocab, width = module.weight.shape
    mean = _mean(module.weight, d.dtype)
    ids = ids.reshape(batch, -1)
    keys = (torch.arange(batch, device=ids.device)[:, None] * vocab + ids).reshape(-1)
    unique, inverse = torch.unique(keys, return_inverse=True)
    # One row per (sample, token): the sum of δ' over the sample's positions of the token.
    rows = d.new_zeros(len(unique), width).index_add_(0, inverse, d.reshape(-1, width))
    sample, token = unique // vocab, unique % vocab
    squares = rows.square()
    zeros = d.new_zeros(batch)
    return {
        "weight": Parts(
            zeros.index_add(0, sample, squares.sum(1)),
            zeros.index_add(0, sample, (rows * mean[token]).sum(1)),
            torch.zeros_like(mean).index_add_(0, token, squares),
        )
    }


def _affine(
    module: nn.Module,
    normalised: torch.Tensor,
    d: torch.Tensor,
    batch: int,
    names: tuple[str, str],
    channels_first: bool,
) -> dict[str, Parts]:
    """g_i(scale) = Σ δ'_i ⊙ x̂_i, g_i(shift) = Σ δ'_i, summed over sample i's positions."""
    scale = getattr(module, names[0])

    def per_sample(t: torch.Tensor) -> torch.Tensor:
        if channels_first:  # (B, C, ...): per channel
            return t.reshape(batch, t.shape[1], -1).sum(2)
        return t.reshape(batch, -1, *scale.shape).sum(1)  # (B, ..., *shape): per element

    parts = {names[0]: materialised(per_sample(d * normalised), _mean(scale, d.dtype))}
    shift = getattr(module, names[1], None)
    if shift is not None:
        parts[names[1]] = materialised(per_sample(d), _mean(shift, d.dtype))
    return parts


def _layer_norm(
    module: nn.Module, a: torch.Tensor, d: torch.Tensor, batch: int
) -> dict[str, Parts]:
    assert isinstance(module, nn.LayerNorm)
    normalised = F.layer_norm(a, module.normalized_shape, eps=module.eps)
    return _affine(module, normalised, d, batch, ("weight", "bias"), channels_first=False)


def _rms_norm(module: nn.Module, a: torch.Tensor, d: torch.Tensor, batch: int) -> dict[str, Parts]:
    assert isinstance(module, nn.RMSNorm)
    normalised = F.rms_norm(a, module.normalized_shape, eps=module.eps)
    return _affine(module, normalised, d, batch, ("weight", "bias"), channels_first=False)


def _course_layer_norm(
    module: nn.Module, a: torch.Tensor, d: torch.Tensor, batch: int
) -> dict[str, Parts]:
    assert isinstance(module, CourseLayerNorm)
    # (x − mean) / √(var + eps), biased variance: torch's layer norm without affine.
    normalised = F.layer_norm(a, a.shape[-1:], eps=module.eps)
    return _affine(module, normalised, d, batch, ("scale", "shift"), channels_first=False)


def _batch_norm(
    module: nn.Module, a: torch.Tensor, d: torch.Tensor, batch: int
) -> dict[str, Parts] | None:
    assert isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d)
    if module.training or module.running_mean is None or module.running_var is None:
        return None  # the batch's statistics: samples interact (refused when planned)
    view = (1, -1) + (1,) * (a.dim() - 2)
    centred = a - module.running_mean.to(a.dtype).view(view)
    normalised = centred / torch.sqrt(module.running_var.to(a.dtype).view(view) + module.eps)
    return _affine(module, normalised, d, batch, ("weight", "bias"), channels_first=True)


RULES: dict[type[nn.Module], Rule] = {
    nn.Linear: _linear,
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.Embedding: _embedding,
    nn.LayerNorm: _layer_norm,
    nn.RMSNorm: _rms_norm,
    CourseLayerNorm: _course_layer_norm,
    nn.BatchNorm1d: _batch_norm,
    nn.BatchNorm2d: _batch_norm,
}
