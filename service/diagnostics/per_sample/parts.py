"""What either path yields per parameter: the sums that every per-sample statistic is read from.

For a parameter θ and the batch's per-sample gradients g_i = ∇θ ℓ_i (i < B), whose mean ḡ is
θ's batch gradient: ‖g_i‖², g_i·ḡ and Σ_i g_i² (elementwise). Norms, noise, alignment and
GSNR are functions of these alone, so a path never has to keep all B gradients at once.
"""

from dataclasses import dataclass

import torch

# Elements of per-sample gradients materialised at once (a chunk of samples), bounding the
# scratch memory of both paths; a single sample's gradient of a larger tensor goes alone.
CHUNK_ELEMENTS = 1 << 22


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 runs keep float64; float32 and bfloat16 runs sum in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_size(batch: int, per_sample_elements: int) -> int:
    """Samples per chunk: as many as fit CHUNK_ELEMENTS, at least one."""
    return max(1, min(batch, CHUNK_ELEMENTS // max(1, per_sample_elements)))


@dataclass
class Parts:
    sq_norms: torch.Tensor  # (B,): ‖g_i‖²
    dots: torch.Tensor  # (B,): g_i · ḡ
    sum_sq: torch.Tensor  # the parameter's shape: Σ_i g_i²

    @staticmethod
    def zeros(batch: int, param: torch.Tensor, dtype: torch.dtype) -> "Parts":
        """A parameter the loss does not reach: every g_i is zero."""
        zero = torch.zeros(batch, dtype=dtype, device=param.device)
        return Parts(zero, zero.clone(), torch.zeros(param.shape, dtype=dtype, device=param.device))


class Accumulator:
    """Parts of one parameter from its per-sample gradients, given a chunk of samples at a
    time in sample order."""

    def __init__(self, mean: torch.Tensor):
        self.shape = mean.shape
        self.mean = mean.reshape(-1)
        self.sq_norms: list[torch.Tensor] = []
        self.dots: list[torch.Tensor] = []
        self.sum_sq = torch.zeros_like(self.mean)

    def add(self, grads: torch.Tensor) -> None:
        """`grads`: (samples, *shape)."""
        flat = grads.reshape(len(grads), -1)
        square = flat.square()
        self.sq_norms.append(square.sum(1))
        self.dots.append(flat @ self.mean)
        self.sum_sq += square.sum(0)

    def parts(self) -> Parts:
        return Parts(torch.cat(self.sq_norms), torch.cat(self.dots), self.sum_sq.view(self.shape))


def materialised(grads: torch.Tensor, mean: torch.Tensor) -> Parts:
    """Parts of per-sample gradients small enough to hold at once, (B, *shape)."""
    accumulator = Accumulator(mean)
    accumulator.add(grads)
    return accumulator.parts()
