"""The loss registry: name -> (output, target) -> scalar."""

from collections.abc import Callable

import torch
from torch.nn import functional as F


def _cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Class ids (..., ) or probabilities (..., C) against logits (..., C); a (N, C) output is
    # exactly nn.CrossEntropyLoss, a (B, T, V) one the course's flatten(0, 1) form.
    classes = output.shape[-1]
    if target.dtype == torch.int64:
        return F.cross_entropy(output.reshape(-1, classes), target.reshape(-1))
    return F.cross_entropy(output.reshape(-1, classes), target.reshape(-1, classes))


def _sum(output: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    return output.sum()


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "smooth_l1": F.smooth_l1_loss,
    "cross_entropy": _cross_entropy,
    "bce_with_logits": F.binary_cross_entropy_with_logits,
    "sum": _sum,
}
