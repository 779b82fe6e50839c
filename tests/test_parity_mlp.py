"""Dozens of random mlp specs against the plain-PyTorch reference (tests/reference.py)."""

import random
from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient

from service.main import create_app
from tests.conftest import close, make_settings
from tests.reference import run_mlp

ACTIVATIONS = ["gelu_tanh", "gelu", "relu", "leaky_relu", "elu", "tanh", "sigmoid", "silu",
               "softplus", "identity"]  # fmt: skip
LOSSES = ["mse", "l1", "smooth_l1", "cross_entropy", "bce_with_logits", "sum"]


def random_case(index: int) -> dict:
    rng = random.Random(index)
    depth = rng.randint(1, 6)
    sizes = [rng.randint(1, 8) for _ in range(depth + 1)]
    if rng.random() < 0.5:  # many equal widths, so that shortcuts apply
        sizes = [sizes[0]] * depth + [sizes[-1]]
    loss = LOSSES[index % len(LOSSES)]
    batch = rng.randint(1, 5)
    out = sizes[-1]
    if loss == "cross_entropy":
        if rng.random() < 0.5:
            target = [rng.randrange(out) for _ in range(batch)]
        else:
            target = [[rng.random() for _ in range(out)] for _ in range(batch)]
    elif loss == "bce_with_logits":
        target = [[float(rng.randint(0, 1)) for _ in range(out)] for _ in range(batch)]
    elif loss == "sum":
        target = None
    else:
        target = [[rng.uniform(-2, 2) for _ in range(out)] for _ in range(batch)]
    return {
        "model": {
            "kind": "mlp",
            "layer_sizes": sizes,
            "activation": ACTIVATIONS[index % len(ACTIVATIONS)],
            "shortcut": rng.random() < 0.6,
            "bias": rng.random() < 0.8,
        },
        "input": [[rng.uniform(-3, 3) for _ in range(sizes[0])] for _ in range(batch)],
        "target": target,
        "loss": loss,
        "seed": rng.randrange(2**63) if rng.random() < 0.3 else rng.randrange(1000),
        "dtype": "float64" if index % 5 == 0 else "float32",
    }


def reference_stats(tensor: torch.Tensor) -> dict[str, float]:
    t = tensor.detach().double()
    return {
        "mean_abs": t.abs().mean().item(),
        "l2_norm": t.norm().item(),
        "max_abs": t.abs().max().item(),
        "mean": t.mean().item(),
        "std": t.std(correction=0).item(),
        "min": t.min().item(),
        "max": t.max().item(),
        "zero_fraction": (t == 0).double().mean().item(),
    }


def assert_stats(got: dict, tensor: torch.Tensor, rel: float, what: str) -> None:
    for key, value in reference_stats(tensor).items():
        # std of near-constant tensors is a difference of nearly equal sums: compare absolutely
        scale = 1e-6 if key == "std" else 1e-12
        assert close(got[key], value, rel=rel, abs_=scale * max(1.0, abs(value))), (
            what,
            key,
            got[key],
            value,
        )
    assert got["nonfinite_count"] == 0 and got["numel"] == tensor.numel()


@pytest.mark.parametrize("index", range(48))
def test_random_mlp_matches_plain_pytorch(client, index):
    case = {k: v for k, v in random_case(index).items() if v is not None}
    dtype = torch.float64 if case["dtype"] == "float64" else torch.float32
    inputs = torch.tensor(case["input"], dtype=dtype)
    target = case.get("target")
    if target is not None:
        is_ids = case["loss"] == "cross_entropy" and not isinstance(target[0], list)
        target = torch.tensor(target, dtype=torch.int64 if is_ids else dtype)
    model, loss, outputs = run_mlp(case["model"], case["seed"], inputs, target, case["loss"], dtype)

    response = client.post("/v1/diagnostics", json=case)
    assert response.status_code == 200, response.text
    report = response.json()
    rel = 1e-9 if dtype == torch.float64 else 1e-5
    assert close(report["loss"], loss.item(), rel=rel)
    named = list(model.named_parameters())
    assert [p["name"] for p in report["parameters"]] == [name for name, _ in named]
    for entry, (name, param) in zip(report["parameters"], named, strict=True):
        assert entry["shape"] == list(param.shape)
        assert_stats(entry["value"], param, rel, f"{name} value")
        assert_stats(entry["grad"], param.grad, rel, f"{name} grad")
    for layer, output in zip(report["layers"], outputs, strict=True):
        assert layer["output_shape"] == list(output.shape)
        assert_stats(layer["output"], output, rel, f"{layer['name']} output")
        assert_stats(layer["output_grad"], output.grad, rel, f"{layer['name']} output grad")


def test_bfloat16_runs_close_to_plain_pytorch(client):
    case = random_case(1) | {"dtype": "bfloat16", "loss": "mse"}
    case["target"] = [[0.5] * case["model"]["layer_sizes"][-1]] * len(case["input"])
    inputs = torch.tensor(case["input"], dtype=torch.bfloat16)
    target = torch.tensor(case["target"], dtype=torch.bfloat16)
    model, loss, _ = run_mlp(case["model"], case["seed"], inputs, target, "mse", torch.bfloat16)
    report = client.post("/v1/diagnostics", json=case).json()
    assert report["provenance"]["dtype"] == "bfloat16"
    assert close(report["loss"], loss.float().item(), rel=1e-6)
    for entry, (_, param) in zip(report["parameters"], model.named_parameters(), strict=True):
        assert close(entry["grad"]["mean_abs"], param.grad.float().abs().mean().item(), rel=1e-6)


def test_generated_tensors_match_torch_generators(client):
    request = {
        "model": {"kind": "mlp", "layer_sizes": [4, 6, 2], "activation": "tanh"},
        "input": {"shape": [16, 4], "distribution": "normal", "seed": 7, "std": 2.0, "mean": 0.5},
        "target": {"shape": [16, 2], "distribution": "uniform", "seed": 8, "low": -1, "high": 1},
        "seed": 5,
    }
    inputs = torch.randn(16, 4, generator=torch.Generator().manual_seed(7)) * 2.0 + 0.5
    target = torch.rand(16, 2, generator=torch.Generator().manual_seed(8)) * 2 - 1
    model, loss, _ = run_mlp(request["model"], 5, inputs, target, "mse")
    report = client.post("/v1/diagnostics", json=request).json()
    assert close(report["loss"], loss.item())
    for entry, (_, param) in zip(report["parameters"], model.named_parameters(), strict=True):
        assert close(entry["grad"]["mean_abs"], param.grad.abs().mean().item())


def test_class_ids_from_randint_generator(client):
    request = {
        "model": {"kind": "mlp", "layer_sizes": [3, 5], "activation": "identity"},
        "input": {"shape": [8, 3], "distribution": "ones"},
        "target": {"shape": [8], "distribution": "randint", "low": 0, "high": 5, "seed": 1},
        "loss": "cross_entropy",
    }
    target = torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(1))
    _model, loss, _ = run_mlp(request["model"], 0, torch.ones(8, 3), target, "cross_entropy")
    report = client.post("/v1/diagnostics", json=request).json()
    assert close(report["loss"], loss.item())


def test_largest_seed_is_accepted_and_deterministic(client):
    case = random_case(3) | {"seed": 2**64 - 1}
    first = client.post("/v1/diagnostics", json=case).json()
    second = client.post("/v1/diagnostics", json=case).json()
    assert first["parameters"] == second["parameters"]
    assert first["provenance"]["seed"] == 2**64 - 1
    # The seed is used as given, not wrapped or clamped: plain PyTorch with the same seed.
    inputs = torch.tensor(case["input"])
    target = torch.tensor(case["target"]) if case.get("target") is not None else None
    _, loss, _ = run_mlp(case["model"], 2**64 - 1, inputs, target, case["loss"])
    assert close(first["loss"], loss.item())


@pytest.fixture(scope="module")
def reference_client() -> Iterator[TestClient]:
    settings = make_settings(native_statistics=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("index", range(0, 48, 6))
def test_random_mlp_matches_plain_pytorch_with_reference_statistics(reference_client, index):
    """The statistics path of a process without the kernel (the default runs the native one)."""
    assert reference_client.get("/readyz").json()["statistics_kernel"] == "off"
    test_random_mlp_matches_plain_pytorch(reference_client, index)
