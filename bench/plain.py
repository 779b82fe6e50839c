"""Plain PyTorch, as a user writes it: the notebook's code and the course's GPT."""

import gc
import sys
import time

import torch
from torch import nn

from tests.reference import ExampleDeepNeuralNetwork
from tests.reference_gpt import GPTModel


def notebook_once() -> list[tuple[str, float]]:
    """The lesson's cell: seed, build, forward, MSE, backward, mean |grad| of each weight."""
    torch.manual_seed(123)
    model = ExampleDeepNeuralNetwork([3, 3, 3, 3, 3, 1], use_shortcut=True)
    output = model(torch.tensor([[1.0, 0.0, -1.0]]))
    loss = nn.MSELoss()(output, torch.tensor([[0.0]]))
    loss.backward()
    return [
        (name, torch.mean(torch.abs(param.grad)).item())
        for name, param in model.named_parameters()
        if "weight" in name
    ]


def mlp(depth: int, width: int) -> nn.Module:
    return ExampleDeepNeuralNetwork([width] * (depth + 1), use_shortcut=True, activation=nn.ReLU)


def forward_backward(model: nn.Module, inputs: torch.Tensor) -> float:
    """Seconds for one forward + sum + backward, gradients cleared first."""
    model.zero_grad(set_to_none=True)
    started = time.perf_counter()
    model(inputs).sum().backward()
    return time.perf_counter() - started


GPT2_SMALL = {"vocab_size": 50257, "context_length": 1024, "emb_dim": 768, "n_heads": 12,
              "n_layers": 12, "drop_rate": 0.1, "qkv_bias": False}  # fmt: skip


def gpt_tokens(seed: int, tokens: int = 128) -> torch.Tensor:
    return torch.randint(0, 50257, (1, tokens), generator=torch.Generator().manual_seed(seed))


def gpt_step(model: nn.Module, ids: torch.Tensor, target: torch.Tensor) -> None:
    logits = model(ids)
    nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten()).backward()


def gpt_cold_and_warm(seed: int, warm_reps: int, device: str = "cpu") -> dict[str, list[float]]:
    """Build + forward + backward (cold), then forward + backward again (warm), as a user
    does it on `device` (built on the CPU, then moved).

    A first model with another seed goes through the same steps unmeasured, so that the
    process is in the state of a server that has run a model before (allocator, kernels).
    """
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    ids, target = gpt_tokens(1).to(device), gpt_tokens(2).to(device)
    torch.manual_seed(seed + 1)
    gpt_step(GPTModel(GPT2_SMALL).to(device), ids, target)
    gc.collect()
    sync()
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = GPTModel(GPT2_SMALL).to(device)
    gpt_step(model, ids, target)
    sync()
    cold = time.perf_counter() - started
    warm = []
    for _ in range(warm_reps):
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        gpt_step(model, ids, target)
        sync()
        warm.append(time.perf_counter() - t)
    return {"cold": [cold], "warm": warm}


if __name__ == "__main__":  # `python -m bench.plain gpt`: one cold run, then peak memory
    import json
    import resource

    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 123
    warms = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    result = gpt_cold_and_warm(seed, warms)
    result["peak_rss_mb"] = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]
    print(json.dumps(result))
