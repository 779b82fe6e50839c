"""The CUDA path: models built on `cuda`, one backward pass, statistics equal to the CPU's and
to plain PyTorch's on the same GPU. Skipped on a machine without CUDA (CI has none); run it
where a GPU is: `pytest tests/test_cuda.py`.

Dropout in training mode draws the masks nn.Dropout draws on the device after
`torch.manual_seed(seed)`; those differ between the CPU and a GPU, so such runs are compared
with plain PyTorch on the GPU, not with the CPU.

Tolerances. float32 matmuls on the GPU sum in another order than on the CPU (2e-4 relative is
ample); cuDNN convolutions use TF32 by default, as they do in a user's own PyTorch, so requests
with convolutions are compared at 5e-3. float64 at 1e-9; bfloat16 (8 bits of mantissa) at 3e-2.
"""

import copy
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn
from torch.nn import functional as F

from service.config import Settings
from service.main import create_app
from service.schemas.models import GPT_PRESETS
from service.schemas.requests import LESSON_REQUEST
from tests.reference import run_mlp
from tests.reference_gpt import GPTModel
from tests.test_parity_architectures import Net, assert_parity, normal
from tests.test_parity_grammar_conv import CONV1D, CONV2D

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

F32, CONV, F64, BF16 = 2e-4, 5e-3, 1e-9, 3e-2


@pytest.fixture(scope="module")
def gpu() -> Any:
    settings = Settings(device="cuda", allowed_devices=["cuda", "cpu"], native_statistics=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def diagnose(client: TestClient, body: dict, device: str | None = None) -> dict:
    body = body if device is None else {**body, "device": device}
    response = client.post("/v1/diagnostics", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def assert_stats_close(got: dict, want: dict, rel: float, floor: float, where: str) -> None:
    assert got["numel"] == want["numel"], where
    assert got["nonfinite_count"] == want["nonfinite_count"], where
    # min, max, mean and std are bounded by max_abs: compare them on that scale, so a mean
    # that is zero in exact arithmetic is not compared with its own rounding noise; the
    # others on their own, down to `floor`.
    for key in ("mean_abs", "l2_norm", "rms", "max_abs", "mean", "std", "min", "max"):
        scale = max(want["max_abs"], floor) if key in ("mean", "std", "min", "max") else floor
        limit = rel * max(abs(want[key]), scale)
        assert abs(got[key] - want[key]) <= limit, (where, key, got[key], want[key])
    assert abs(got["zero_fraction"] - want["zero_fraction"]) <= 0.02, where


def assert_reports_close(got: dict, want: dict, rel: float) -> None:
    """Every statistic of two reports of the same request, on a scale of the model's largest
    gradient (1e-3 of it) for gradients that are rounding noise (a conv bias before batch norm)."""
    assert got["output_shape"] == want["output_shape"]
    if want["loss"] is not None:
        assert abs(got["loss"] - want["loss"]) <= rel * max(abs(want["loss"]), 1e-6)
    grads = [p["grad"]["max_abs"] for p in want["parameters"] if p["grad"]]
    floor = 1e-3 * max(grads, default=0.0)
    assert [p["name"] for p in got["parameters"]] == [p["name"] for p in want["parameters"]]
    for g, w in zip(got["parameters"], want["parameters"], strict=True):
        assert_stats_close(g["value"], w["value"], rel, 0.0, f"{w['name']} value")
        assert (g["grad"] is None) == (w["grad"] is None), w["name"]
        if w["grad"]:
            assert_stats_close(g["grad"], w["grad"], rel, floor, f"{w['name']} grad")
    for g, w in zip(got["layers"], want["layers"], strict=True):
        assert g["name"] == w["name"] and g["output_shape"] == w["output_shape"]
        assert_stats_close(g["output"], w["output"], rel, 0.0, f"{w['name']} output")
        if w["output_grad"]:
            out_floor = 1e-3 * w["output_grad"]["max_abs"]
            assert_stats_close(g["output_grad"], w["output_grad"], rel, out_floor, w["name"])
    assert got["diagnosis"]["verdict"] == want["diagnosis"]["verdict"]


def lesson(shortcut: bool, dtype: str = "float32") -> dict:
    request = copy.deepcopy(LESSON_REQUEST)
    request["model"]["shortcut"] = shortcut
    return {**request, "dtype": dtype}


def sequential(layers: list, shape: list, **extra: Any) -> dict:
    return {
        "model": {"kind": "sequential", "layers": layers},
        "input": {"shape": shape, "distribution": "normal", "seed": 3},
        "seed": 11,
        **extra,
    }


block = {"type": "transformer_block", "heads": 4}
GPT_TINY_DROPOUT = {
    "model": {"kind": "gpt", "preset": "gpt-tiny", "drop_rate": 0.2},
    "input": {"shape": [2, 12], "distribution": "randint", "high": 96, "seed": 1},
    "target": {"shape": [2, 12], "distribution": "randint", "high": 96, "seed": 2},
    "loss": "cross_entropy",
    "seed": 5,
}
CASES: dict[str, tuple[dict, float]] = {
    "lesson": (lesson(False), F32),
    "lesson_shortcut": (lesson(True), F32),
    "lesson_float64": (lesson(True, "float64"), F64),
    "lesson_bfloat16": (lesson(True, "bfloat16"), BF16),
    "cnn_batch_norm_pools": (sequential([
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"type": "batch_norm"}, {"type": "relu"}, {"type": "max_pool2d", "kernel_size": 2},
        {"type": "conv2d", "out_channels": 6, "kernel_size": 3},
        {"type": "avg_pool2d", "kernel_size": 2}, {"type": "flatten"},
        {"type": "linear", "out_features": 10},
    ], [4, 1, 12, 12], target=[1, 7, 0, 9], loss="cross_entropy"), CONV),
    "conv1d_rms_norm_dropout_eval": (sequential([
        {"type": "conv1d", "out_channels": 5, "kernel_size": 3, "stride": 2},
        {"type": "batch_norm"}, {"type": "silu"}, {"type": "dropout", "p": 0.3},
        {"type": "flatten"}, {"type": "rms_norm"}, {"type": "linear", "out_features": 2},
    ], [3, 2, 9], loss="sum", mode="eval"), CONV),
    "residual_conv_projection": (sequential([
        {"type": "residual", "projection": True, "body": [
            {"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1},
            {"type": "elu"}]},
    ], [2, 2, 5, 5], loss="sum"), CONV),
    "residual_mlp": (sequential([
        {"type": "linear", "out_features": 16}, {"type": "gelu"},
        {"type": "residual", "body": [{"type": "linear", "out_features": 16}, {"type": "tanh"}]},
        {"type": "residual", "projection": True, "body": [
            {"type": "linear", "out_features": 4}, {"type": "sigmoid"}]},
        {"type": "layer_norm"}, {"type": "linear", "out_features": 1},
    ], [8, 5], target={"shape": [8, 1], "distribution": "uniform", "seed": 4},
        loss="bce_with_logits"), F32),
    "pre_norm_stack": (sequential([block, block], [2, 6, 16], loss="smooth_l1",
                                  target={"shape": [2, 6, 16], "distribution": "zeros"}), F32),
    "post_norm_no_shortcut": (sequential(
        [{**block, "norm": "post", "shortcut": False}] * 2, [2, 6, 16], loss="l1",
        target={"shape": [2, 6, 16], "distribution": "normal", "seed": 5}), F32),
    "embedding_attention": ({
        "model": {"kind": "sequential", "layers": [
            {"type": "embedding", "num_embeddings": 10, "embedding_dim": 12},
            {"type": "attention", "heads": 3, "qkv_bias": True},
            {"type": "linear", "out_features": 10}]},
        "input": [[1, 2, 3, 4], [5, 6, 7, 8]],  # classes: dimension 1 of the (2, 4, 10) output
        "target": [[0, 2, 3, 1, 3, 0, 1, 2, 2, 0], [3, 1, 0, 0, 2, 3, 1, 1, 0, 2]],
        "loss": "cross_entropy", "seed": 21}, F32),
    "cross_entropy_probabilities": (sequential(
        [{"type": "linear", "out_features": 6}, {"type": "leaky_relu"},
         {"type": "linear", "out_features": 3}], [4, 6], loss="cross_entropy",
        target=[[0.2, 0.3, 0.5], [1, 0, 0], [0, 1, 0], [0.5, 0.5, 0]]), F32),
    "gpt_tiny_dropout_eval": (GPT_TINY_DROPOUT | {"mode": "eval"}, F32),
}  # fmt: skip
CASES["conv_options_channel_layers_eval"] = (
    sequential(CONV2D, [2, 4, 9, 9], target=[1, 3], loss="cross_entropy", mode="eval"),
    CONV,
)
CASES["conv1d_options_channel_layers_eval"] = (
    sequential(CONV1D, [3, 4, 16], loss="sum", mode="eval"),
    CONV,
)
for activation in ("gelu", "relu", "softplus", "identity"):
    CASES[f"mlp_{activation}"] = (
        {**lesson(True), "model": {**lesson(True)["model"], "activation": activation}},
        F32,
    )
# The shape layers, the positional embedding, nn.MultiheadAttention's layout, padding_idx,
# activation options and a concatenating residual (with a convolution: CONV).
CASES["grammar_shapes_and_sequences"] = ({
    "model": {"kind": "sequential", "layers": [
        {"type": "embedding", "num_embeddings": 10, "embedding_dim": 12, "padding_idx": 0},
        {"type": "positional_embedding", "max_length": 8},
        {"type": "attention", "heads": 3, "layout": "torch"},
        {"type": "transpose", "dim0": 1, "dim1": 2},
        {"type": "residual", "merge": "concat", "body": [
            {"type": "conv1d", "out_channels": 4, "kernel_size": 1}]},
        {"type": "permute", "dims": [0, 2, 1]}, {"type": "reshape", "shape": [2, -1]},
        {"type": "unflatten", "dim": 2, "sizes": [4, -1]}, {"type": "flatten"},
        {"type": "leaky_relu", "negative_slope": 0.2}, {"type": "linear", "out_features": 10}]},
    "input": [[1, 0, 3, 4], [5, 6, 0, 8]], "target": [3, 7], "loss": "cross_entropy",
    "seed": 21}, CONV)  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_cuda_equals_cpu(gpu, name):
    body, rel = CASES[name]
    on_gpu = diagnose(gpu, body, "cuda")
    on_cpu = diagnose(gpu, body, "cpu")
    assert on_gpu["provenance"]["device"].startswith("cuda")
    assert on_cpu["provenance"]["device"] == "cpu"
    # Weights are drawn on the CPU from the request's generator, then moved.
    assert on_gpu["provenance"]["init_sha256"] == on_cpu["provenance"]["init_sha256"]
    assert_reports_close(on_gpu, on_cpu, rel)


def test_the_default_device_is_cuda(gpu):
    report = diagnose(gpu, lesson(True))
    assert report["provenance"]["device"] == "cuda:0"
    assert gpu.get("/v1/capabilities").json()["devices"]["default"].startswith("cuda")
    assert gpu.get("/readyz").status_code == 200


@pytest.mark.parametrize("shortcut", [False, True])
def test_lesson_equals_plain_pytorch_on_cuda(gpu, shortcut):
    body = lesson(shortcut)
    inputs = torch.tensor(body["input"], device="cuda")
    target = torch.tensor(body["target"], device="cuda")
    model, loss, _ = run_mlp(body["model"], body["seed"], inputs, target, "mse", device="cuda")
    report = diagnose(gpu, body, "cuda")
    assert_parity(report, model, loss)


@pytest.mark.parametrize(
    ("norm", "drop_rate", "mode"),
    [("pre", 0.0, "train"), ("post", 0.0, "train"), ("pre", 0.2, "train"), ("pre", 0.2, "eval")],
)
def test_gpt_equals_the_course_code_on_cuda(gpu, norm, drop_rate, mode):
    cfg = GPT_PRESETS["gpt-tiny"] | {"drop_rate": drop_rate}
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg["vocab_size"], (2, 16), generator=generator)
    target = torch.randint(0, cfg["vocab_size"], (2, 16), generator=generator)
    torch.manual_seed(9)  # seeds the GPU's generator too: nn.Dropout draws from it there
    model = GPTModel(cfg, norm).to("cuda").train(mode == "train")
    logits = model(ids.cuda())
    loss = F.cross_entropy(logits.flatten(0, 1), target.cuda().flatten())
    loss.backward()
    body = {
        "model": {"kind": "gpt", "preset": "gpt-tiny", "norm": norm, "drop_rate": drop_rate},
        "input": ids.tolist(),
        "target": target.tolist(),
        "loss": "cross_entropy",
        "seed": 9,
        "mode": mode,
    }
    assert_parity(diagnose(gpu, body, "cuda"), model, loss)


def test_sequential_dropout_in_training_equals_plain_pytorch_on_cuda(gpu):
    body = sequential(
        [{"type": "linear", "out_features": 64}, {"type": "dropout", "p": 0.25},
         {"type": "relu"}, {"type": "linear", "out_features": 1}],
        [8, 5], target={"shape": [8, 1], "distribution": "uniform", "seed": 4},
        loss="bce_with_logits",
    )  # fmt: skip
    inputs = normal((8, 5), 3).cuda()
    target = torch.rand((8, 1), generator=torch.Generator().manual_seed(4)).cuda()
    torch.manual_seed(11)
    model = Net(nn.Linear(5, 64), nn.Dropout(0.25), nn.ReLU(), nn.Linear(64, 1)).to("cuda")
    loss = F.binary_cross_entropy_with_logits(model(inputs), target)
    loss.backward()
    report = diagnose(gpu, body, "cuda")
    assert_parity(report, model, loss)
    assert report["layers"][1]["output"]["zero_fraction"] > 0.1  # the masks did drop


@pytest.mark.parametrize(("spatial", "shape"), [(1, (8, 6, 5)), (2, (4, 3, 5, 5))])
def test_channel_dropout_in_training_equals_plain_pytorch_on_cuda(gpu, spatial, shape):
    # Linear layers on the last dimension: no TF32 convolution between the two.
    body = sequential(
        [{"type": "linear", "out_features": 8}, {"type": f"dropout{spatial}d", "p": 0.4},
         {"type": "relu"}, {"type": "flatten"}, {"type": "linear", "out_features": 1}],
        list(shape), loss="sum",
    )  # fmt: skip
    torch.manual_seed(11)  # nn.Dropout1d/2d draw their (N, C, 1, ...) noise on the GPU
    dropout = nn.Dropout1d(0.4) if spatial == 1 else nn.Dropout2d(0.4)
    flat = 8 * shape[1] * (shape[2] if spatial == 2 else 1)
    model = Net(nn.Linear(5, 8), dropout, nn.ReLU(), nn.Flatten(), nn.Linear(flat, 1)).cuda()
    loss = model(normal(shape, 3).cuda()).sum()
    loss.backward()
    assert_parity(diagnose(gpu, body, "cuda"), model, loss)


def test_repeated_requests_do_not_grow_gpu_memory(gpu):
    body = GPT_TINY_DROPOUT  # dropout in training mode: the masks are drawn on the GPU
    first = diagnose(gpu, body, "cuda")
    diagnose(gpu, body, "cuda")
    torch.cuda.synchronize()
    settled = torch.cuda.memory_allocated()
    for _ in range(3):
        again = diagnose(gpu, body, "cuda")
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == settled
    assert again["parameters"] == first["parameters"]  # the cached model gives the same run


@pytest.mark.slow
def test_gpt2_small_cuda_equals_cpu(gpu):
    body = {
        "model": {"kind": "gpt", "preset": "gpt2-small"},
        "input": {"shape": [1, 128], "distribution": "randint", "high": 50257, "seed": 1},
        "target": {"shape": [1, 128], "distribution": "randint", "high": 50257, "seed": 2},
        "loss": "cross_entropy",
        "seed": 3,
        "mode": "eval",
    }
    assert_reports_close(diagnose(gpu, body, "cuda"), diagnose(gpu, body, "cpu"), 1e-3)
