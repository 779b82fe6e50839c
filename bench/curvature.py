"""`python -m bench curvature`: the cost of one Hessian-vector product, and of the precision
check, against plain PyTorch on the same model in the same run.

Service side: a request with `curvature` (k = 1, 24 power iterations at a tolerance no run
meets, 24 trace probes: 48 products) reports `timing_ms.curvature` and `hvps`; their ratio is the
cost of a product with its share of the pass that builds ∇L's graph and of the vector
algebra. Plain side, as a user writes it: forward + backward, and one product by double
backward through a retained graph (autograd.grad of ∇L·v). Models: an MLP of 4×512 (1.05M
parameters, tanh, MSE) at batch 64, and gpt-tiny at batch 8 × 32 tokens (cross-entropy).
"""

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from bench.server import Client, Server
from tests.reference import ExampleDeepNeuralNetwork
from tests.reference_gpt import GPTModel

Row = tuple[str, str, str, str]
PRODUCTS = {"top_eigenvalues": 1, "max_iterations": 24, "tolerance": 1e-12, "trace_samples": 24}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def _mlp() -> tuple[dict, Callable[[], tuple[nn.Module, Callable[[], torch.Tensor]]]]:
    request = {
        "model": {"kind": "mlp", "layer_sizes": [512] * 5, "activation": "tanh"},
        "input": {"shape": [64, 512], "distribution": "normal", "seed": 1},
        "target": {"shape": [64, 512], "distribution": "normal", "seed": 2},
        "loss": "mse",
        "seed": 0,
    }

    def plain() -> tuple[nn.Module, Callable[[], torch.Tensor]]:
        torch.manual_seed(0)
        model = ExampleDeepNeuralNetwork([512] * 5, False, nn.Tanh)
        inputs = torch.randn(64, 512, generator=torch.Generator().manual_seed(1))
        target = torch.randn(64, 512, generator=torch.Generator().manual_seed(2))
        return model, lambda: F.mse_loss(model(inputs), target)

    return request, plain


def _gpt() -> tuple[dict, Callable[[], tuple[nn.Module, Callable[[], torch.Tensor]]]]:
    from service.schemas.models import GPT_PRESETS

    ids = torch.randint(0, 96, (8, 32), generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 96, (8, 32), generator=torch.Generator().manual_seed(2))
    request = {
        "model": {"kind": "gpt", "preset": "gpt-tiny"},
        "input": ids.tolist(),
        "target": target.tolist(),
        "loss": "cross_entropy",
        "seed": 0,
    }

    def plain() -> tuple[nn.Module, Callable[[], torch.Tensor]]:
        torch.manual_seed(0)
        model = GPTModel(GPT_PRESETS["gpt-tiny"])
        return model, lambda: F.cross_entropy(model(ids).flatten(0, 1), target.flatten())

    return request, plain


class Plain:
    """The plain side: forward + backward, and one product by double backward through a
    retained graph of ∇L."""

    def __init__(self, make: Callable[[], tuple[nn.Module, Callable[[], torch.Tensor]]]):
        self.model, self.loss = make()
        self.params = list(self.model.parameters())
        self.grads = torch.autograd.grad(self.loss(), self.params, create_graph=True)
        self.vector = [torch.randn_like(p) for p in self.params]

    def forward_backward(self) -> None:
        self.model.zero_grad(set_to_none=True)
        self.loss().backward()

    def product(self) -> None:
        torch.autograd.grad(self.grads, self.params, self.vector, retain_graph=True)


def _seconds(fn: Callable[[], None], reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def curvature(rounds: int = 7) -> list[Row]:
    """Rounds alternate the plain side and the service's requests, so that drifts in the
    speed of a shared machine hit both alike; one torch thread on each side (the server's
    GRADIAG_TORCH_THREADS=1), so that the two do not fight over cores."""
    rows: list[Row] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Server(torch_threads=1) as server:
            for name, (request, make) in {
                "MLP 4x512 batch 64": _mlp(),
                "gpt-tiny 8x32": _gpt(),
            }.items():
                rows += _compare(name, request, Plain(make), server, rounds)
    finally:
        torch.set_num_threads(threads)
    return rows


def _compare(name: str, request: dict, plain: Plain, server: Server, rounds: int) -> list[Row]:
    client = Client(server.port)
    client.post("/v1/diagnostics", request)  # builds and caches the model
    plain.forward_backward()
    plain.product()
    fwd_bwd, product, per_product, passes, checks = [], [], [], [], []
    for _ in range(rounds):
        fwd_bwd.append(_seconds(plain.forward_backward))
        product.append(_seconds(plain.product))
        report = client.post("/v1/diagnostics", request | {"curvature": PRODUCTS})
        section = report["curvature"]
        per_product.append(report["timing_ms"]["curvature"] / 1000 / section["hvps"])
        timing = report["timing_ms"]
        passes.append((timing["forward"] + timing["backward"]) / 1000)
        checked = client.post("/v1/diagnostics", request | {"precision_check": True})
        checks.append(checked["timing_ms"]["precision"] / 1000)
    median = statistics.median
    hvp, check, run = median(per_product), median(checks), median(passes)
    return [
        (f"{name}: one HVP (service) vs plain forward+backward", _ms(median(fwd_bwd)),
         _ms(hvp), f"{hvp / median(fwd_bwd):.2f}x"),
        (f"{name}: one HVP, service vs plain double backward", _ms(median(product)),
         _ms(hvp), f"{hvp / median(product):.2f}x"),
        (f"{name}: precision check (float64 pass) vs the run's forward+backward", _ms(run),
         _ms(check), f"{check / run:.2f}x"),
    ]  # fmt: skip
