"""Per-sample norms, noise and GSNR against plain forward+backward of the same model.

The service's domain is called in-process (plan, model cache, run; no HTTP), so that the vmap
path can be measured alone (the identities switched off) on the same cached model. The
service's figure is its forward + backward + per-sample laps (`timing_ms`); the plain figure
is a forward, the loss and a backward of the same model built by the course's code, in the
same process, rounds alternating. `python -m bench.per_sample [cpu|cuda] [threads]`.
"""

import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from unittest.mock import patch

import torch
from torch import nn

from tests.reference import ExampleDeepNeuralNetwork
from tests.reference_gpt import GPTModel

Row = tuple[str, str, str, str]

MLP_WIDTH, MLP_DEPTH, MLP_BATCH = 512, 4, 64  # 4 x (512² + 512) = 1.05M parameters
GPT_BATCH, GPT_TOKENS = 8, 64
GPT_TINY = {"vocab_size": 96, "context_length": GPT_TOKENS, "emb_dim": 64, "n_heads": 4,
            "n_layers": 2, "drop_rate": 0.0, "qkv_bias": False}  # fmt: skip


def _timed(device: str) -> Callable[[Callable[[], None]], float]:
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None

    def seconds(step: Callable[[], None]) -> float:
        sync()
        started = time.perf_counter()
        step()
        sync()
        return time.perf_counter() - started

    return seconds


def _mlp(device: str) -> tuple[dict[str, Any], Callable[[], float]]:
    request = {
        "model": {"kind": "mlp", "layer_sizes": [MLP_WIDTH] * (MLP_DEPTH + 1),
                  "activation": "relu", "shortcut": True},
        "input": {"shape": [MLP_BATCH, MLP_WIDTH], "distribution": "normal", "seed": 1},
        "loss": "sum",
    }  # fmt: skip
    torch.manual_seed(0)
    sizes = [MLP_WIDTH] * (MLP_DEPTH + 1)
    model = ExampleDeepNeuralNetwork(sizes, use_shortcut=True, activation=nn.ReLU).to(device)
    inputs = torch.randn(MLP_BATCH, MLP_WIDTH, device=device)
    seconds = _timed(device)

    def step() -> float:
        model.zero_grad(set_to_none=True)
        return seconds(lambda: model(inputs).sum().backward())

    return request, step


def _gpt(device: str) -> tuple[dict[str, Any], Callable[[], float]]:
    shape = [GPT_BATCH, GPT_TOKENS]
    request = {
        "model": {"kind": "gpt", "preset": "gpt-tiny", "context_length": GPT_TOKENS},
        "input": {"shape": shape, "distribution": "randint", "high": 96, "seed": 1},
        "target": {"shape": shape, "distribution": "randint", "high": 96, "seed": 2},
        "loss": "cross_entropy",
    }
    torch.manual_seed(0)
    model = GPTModel(GPT_TINY).to(device)
    ids = torch.randint(0, 96, (GPT_BATCH, GPT_TOKENS), device=device)
    target = torch.randint(0, 96, (GPT_BATCH, GPT_TOKENS), device=device)
    seconds = _timed(device)

    def forward_backward() -> None:
        logits = model(ids)
        nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten()).backward()

    def step() -> float:
        model.zero_grad(set_to_none=True)
        return seconds(forward_backward)

    return request, step


class _Service:
    """Plan and run requests as the service does, one model cache, no HTTP."""

    def __init__(self, device: str):
        from service.config import canonical_device
        from service.diagnostics.model_cache import ModelCache
        from service.diagnostics.stats import Statistics

        self.device = canonical_device(device)
        self.side = ThreadPoolExecutor(max_workers=1)
        self.models = ModelCache(1 << 32, 8, Statistics(None, "off"), self.side)

    def timing(self, body: dict[str, Any]) -> dict[str, float]:
        from service.config import Limits
        from service.diagnostics.plan import plan_run
        from service.diagnostics.run import run
        from service.schemas.requests import DiagnosticsRequest

        plan = plan_run(
            DiagnosticsRequest.model_validate(body),
            default_device=self.device,
            allowed_devices={"cpu", self.device},
            default_dtype="float32",
            limits=Limits(),
        )
        return dict(run(plan, threading.Event(), self.models)["timing_ms"])


def _passes(timing: dict[str, float]) -> float:
    return (timing["forward"] + timing["backward"] + timing.get("per_sample", 0.0)) / 1000


def _measure(
    service: _Service, request: dict[str, Any], step: Callable[[], float], rounds: int, vmap: bool
) -> tuple[float, float, float, float]:
    """Medians of plain, service without and with per_sample, and the per-sample lap alone."""
    from service.diagnostics.per_sample.identities import RULES

    with_samples = {**request, "per_sample": True}
    plain_s, without, with_, lap = [], [], [], []
    with patch.dict(RULES, {}, clear=vmap):
        for _ in range(3):  # warm: the model cache, the kernels, the allocator
            step()
            service.timing(request)
            service.timing(with_samples)
        for _ in range(rounds):
            plain_s.append(step())
            without.append(_passes(service.timing(request)))
            timing = service.timing(with_samples)
            with_.append(_passes(timing))
            lap.append(timing["per_sample"] / 1000)
    return tuple(statistics.median(v) for v in (plain_s, without, with_, lap))  # type: ignore[return-value]


def per_sample(device: str = "cpu", rounds: int = 15) -> list[Row]:
    service = _Service(device)
    rows: list[Row] = []
    where = f"{device}, {torch.get_num_threads()} threads" if device == "cpu" else device
    try:
        for label, (request, step) in (
            (f"MLP {MLP_DEPTH}x{MLP_WIDTH} (1.05M params), batch {MLP_BATCH}", _mlp(device)),
            (f"gpt-tiny, batch {GPT_BATCH} x {GPT_TOKENS} tokens", _gpt(device)),
        ):
            for path in ("identities", "vmap"):
                plain_s, without, with_, lap = _measure(
                    service, {**request, "device": device}, step, rounds, path == "vmap"
                )
                rows.append(
                    (
                        f"{label} ({where}): fwd+bwd vs fwd+bwd+per-sample norms, noise, GSNR; "
                        f"{path} path (per-sample lap {lap * 1000:.3f} ms; the service's "
                        f"fwd+bwd alone {without / plain_s:.2f}x)",
                        f"{plain_s * 1000:.3f} ms",
                        f"{with_ * 1000:.3f} ms",
                        f"{with_ / plain_s:.2f}x",
                    )
                )
    finally:
        service.side.shutdown()
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 2:
        torch.set_num_threads(int(sys.argv[2]))
    for measured in per_sample(sys.argv[1] if len(sys.argv) > 1 else "cpu"):
        print(" | ".join(measured), flush=True)
