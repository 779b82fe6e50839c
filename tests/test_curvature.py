"""Curvature against the exact Hessian of independent plain-PyTorch models.

The reference: the model built after torch.manual_seed(seed) from plain nn modules (the
course's code for the GPT), its loss as a function of all parameters flattened in
named_parameters() order, `torch.autograd.functional.hessian` of it, `eigvalsh`.

Tolerances (float64 runs, tolerance 1e-10): eigenvalues and block eigenvalues within 1e-6
relative of the exact ones of largest magnitude; the trace estimate equal to the mean of
zᵀHz over the documented probes within 1e-9 relative; that estimate within 4 standard errors
of the exact trace, and its standard error within a factor 2 of Hutchinson's
√(2 Σ_{i≠j} H_ij² / m). float32 runs: 1e-4 relative. Hutchinson's estimator is not exact for
any finite m unless H is diagonal: its error shrinks as 1/√m.
"""

import math
import threading
import time

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from tests.conftest import close
from tests.reference import ExampleDeepNeuralNetwork
from tests.reference_gpt import GPTModel, MultiHeadAttention

URL = "/v1/diagnostics"
EXACT = {"tolerance": 1e-10, "max_iterations": 1000}


class Net(nn.Module):
    def __init__(self, *layers):
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


def normal(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def exact_hessian(model, inputs, loss_fn, rng_state=None):
    """The Hessian of loss_fn(model(inputs)) in all parameters, and the tensors' sizes."""
    names = [name for name, _ in model.named_parameters()]
    params = [p.detach() for _, p in model.named_parameters()]
    sizes = [p.numel() for p in params]

    def loss(flat):
        tensors = [t.view(p.shape) for t, p in zip(flat.split(sizes), params, strict=True)]
        if rng_state is not None:  # dropout draws the same masks in every pass
            torch.set_rng_state(rng_state)
        return loss_fn(functional_call(model, dict(zip(names, tensors, strict=True)), (inputs,)))

    flat = torch.cat([p.reshape(-1) for p in params])
    return torch.autograd.functional.hessian(loss, flat, vectorize=True), sizes


def top_by_magnitude(matrix, k):
    values = torch.linalg.eigvalsh(matrix)
    return values[values.abs().argsort(descending=True)[:k]].tolist()


def probes(seed, sizes, k, m):
    """The service's draws: k normal start vectors, then m Rademacher probes."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(k):
        for size in sizes:
            torch.randn((size,), generator=generator)
    return [
        torch.cat([
            torch.randint(0, 2, (size,), generator=generator, dtype=torch.int8) * 2 - 1
            for size in sizes
        ])
        .double()
        for _ in range(m)
    ]  # fmt: skip


def diagnose(client, body):
    response = client.post(URL, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def assert_matches(report, hessian, sizes, seed, options, rel=1e-6, same_probes=1e-9):
    k, m = options["top_eigenvalues"], options["trace_samples"]
    curvature = report["curvature"]
    assert curvature["converged"], curvature
    expected = top_by_magnitude(hessian, k)
    for got, want in zip(curvature["top_eigenvalues"], expected, strict=True):
        assert close(got, want, rel=rel, abs_=1e-9), (curvature["top_eigenvalues"], expected)
    zs = probes(seed, sizes, k, m)
    samples = [float(z @ hessian @ z) for z in zs]
    trace = curvature["trace"]
    assert close(trace["estimate"], sum(samples) / m, rel=same_probes, abs_=1e-9)
    exact = float(hessian.trace())
    assert abs(trace["estimate"] - exact) <= 4 * trace["stderr"], (trace, exact)
    off = float((hessian**2).sum() - (hessian.diagonal() ** 2).sum())
    assert 0.5 <= trace["stderr"] / math.sqrt(2 * off / m) <= 2
    if not options.get("per_layer"):
        assert curvature["hvps"] == sum(curvature["iterations"]) + m
        assert curvature["per_layer"] is None
        return
    bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
    for entry, start, end in zip(curvature["per_layer"], bounds[:-1], bounds[1:], strict=True):
        block = hessian[start:end, start:end]
        assert entry["converged"], entry
        want = top_by_magnitude(block, min(k, end - start))
        for got, value in zip(entry["top_eigenvalues"], want, strict=True):
            assert close(got, value, rel=rel, abs_=1e-9), (entry["name"], entry, want)
        parts = [float(z[start:end] @ (hessian @ z)[start:end]) for z in zs]
        assert close(entry["trace"]["estimate"], sum(parts) / m, rel=same_probes, abs_=1e-9)


def test_mlp(client):
    options = {"top_eigenvalues": 3, "trace_samples": 64, "per_layer": True, **EXACT}
    body = {
        "model": {"kind": "mlp", "layer_sizes": [3, 5, 5, 2], "activation": "tanh"},
        "input": {"shape": [6, 3], "distribution": "normal", "seed": 3},
        "target": {"shape": [6, 2], "distribution": "normal", "seed": 4},
        "seed": 7,
        "dtype": "float64",
        "curvature": options,
    }
    torch.manual_seed(7)
    model = ExampleDeepNeuralNetwork([3, 5, 5, 2], False, nn.Tanh).double()
    target = normal((6, 2), 4).double()
    hessian, sizes = exact_hessian(
        model, normal((6, 3), 3).double(), lambda out: F.mse_loss(out, target)
    )
    report = diagnose(client, body)
    assert_matches(report, hessian, sizes, 7, options)
    assert [e["name"] for e in report["curvature"]["per_layer"]] == [
        n for n, _ in model.named_parameters()
    ]
    assert report["curvature"]["per_layer"][0]["layer"] == "layers.0"


def test_mlp_in_float32_within_1e_4(client):
    options = {"top_eigenvalues": 2, "trace_samples": 32, "tolerance": 1e-7, "max_iterations": 500}
    body = {
        "model": {"kind": "mlp", "layer_sizes": [3, 5, 5, 2], "activation": "tanh"},
        "input": {"shape": [6, 3], "distribution": "normal", "seed": 3},
        "target": {"shape": [6, 2], "distribution": "normal", "seed": 4},
        "seed": 7,
        "curvature": options,
    }
    torch.manual_seed(7)
    model = ExampleDeepNeuralNetwork([3, 5, 5, 2], False, nn.Tanh).double()
    target = normal((6, 2), 4).double()
    hessian, sizes = exact_hessian(
        model, normal((6, 3), 3).double(), lambda out: F.mse_loss(out, target)
    )
    assert_matches(diagnose(client, body), hessian, sizes, 7, options, 1e-4, same_probes=1e-5)


def test_cnn_with_batch_norm_in_training_mode(client):
    options = {"top_eigenvalues": 2, "trace_samples": 32, "per_layer": True, **EXACT}
    body = {
        "model": {
            "kind": "sequential",
            "layers": [
                {"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1},
                {"type": "batch_norm"},
                {"type": "relu"},
                {"type": "avg_pool2d", "kernel_size": 2},
                {"type": "flatten"},
                {"type": "linear", "out_features": 3},
            ],
        },
        "input": {"shape": [4, 1, 6, 6], "distribution": "normal", "seed": 3},
        "target": [0, 2, 1, 0],
        "loss": "cross_entropy",
        "seed": 11,
        "dtype": "float64",
        "curvature": options,
    }
    torch.manual_seed(11)
    model = Net(
        nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(2 * 3 * 3, 3),
    ).double()  # fmt: skip
    target = torch.tensor([0, 2, 1, 0])
    hessian, sizes = exact_hessian(
        model, normal((4, 1, 6, 6), 3).double(), lambda out: F.cross_entropy(out, target)
    )
    assert_matches(diagnose(client, body), hessian, sizes, 11, options)


def test_layer_norm_and_attention(client):
    options = {"top_eigenvalues": 2, "trace_samples": 32, "per_layer": True, **EXACT}
    body = {
        "model": {
            "kind": "sequential",
            "layers": [
                {"type": "linear", "out_features": 8},
                {"type": "layer_norm"},
                {"type": "attention", "heads": 2, "qkv_bias": True},
                {"type": "linear", "out_features": 2},
            ],
        },
        "input": {"shape": [2, 4, 3], "distribution": "normal", "seed": 1},
        "target": {"shape": [2, 4, 2], "distribution": "normal", "seed": 2},
        "seed": 5,
        "dtype": "float64",
        "curvature": options,
    }
    torch.manual_seed(5)
    model = Net(
        nn.Linear(3, 8), nn.LayerNorm(8), MultiHeadAttention(8, 8, 4, 0.0, 2, qkv_bias=True),
        nn.Linear(8, 2),
    ).double()  # fmt: skip
    target = normal((2, 4, 2), 2).double()
    hessian, sizes = exact_hessian(
        model, normal((2, 4, 3), 1).double(), lambda out: F.mse_loss(out, target)
    )
    assert_matches(diagnose(client, body), hessian, sizes, 5, options)


def test_dropout_masks_are_those_of_the_batch_run(client):
    options = {"top_eigenvalues": 2, "trace_samples": 16, **EXACT}
    body = {
        "model": {
            "kind": "sequential",
            "layers": [
                {"type": "linear", "out_features": 6},
                {"type": "dropout", "p": 0.4},
                {"type": "tanh"},
                {"type": "linear", "out_features": 1},
            ],
        },
        "input": {"shape": [5, 3], "distribution": "normal", "seed": 1},
        "target": {"shape": [5, 1], "distribution": "normal", "seed": 2},
        "seed": 13,
        "dtype": "float64",
        "curvature": options,
    }
    torch.manual_seed(13)
    model = Net(nn.Linear(3, 6), nn.Dropout(0.4), nn.Tanh(), nn.Linear(6, 1))
    state = torch.get_rng_state()  # dropout continues the stream after construction
    model.double()
    target = normal((5, 1), 2).double()
    hessian, sizes = exact_hessian(
        model, normal((5, 3), 1).double(), lambda out: F.mse_loss(out, target), state
    )
    report = diagnose(client, body)
    assert_matches(report, hessian, sizes, 13, options)
    torch.set_rng_state(state)
    loss = F.mse_loss(model(normal((5, 3), 1).double()), target)
    assert close(report["loss"], loss.item(), rel=1e-12)  # the batch run's masks too


def test_course_gpt_micro(client):
    from service.schemas.models import GPT_PRESETS

    options = {"top_eigenvalues": 2, "trace_samples": 16, **EXACT}
    cfg = GPT_PRESETS["gpt-micro"]
    ids = torch.randint(0, 16, (2, 6), generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 16, (2, 6), generator=torch.Generator().manual_seed(2))
    body = {
        "model": {"kind": "gpt", "preset": "gpt-micro"},
        "input": ids.tolist(),
        "target": target.tolist(),
        "loss": "cross_entropy",
        "seed": 123,
        "dtype": "float64",
        "curvature": options,
    }
    torch.manual_seed(123)
    model = GPTModel(cfg).double()
    hessian, sizes = exact_hessian(
        model, ids, lambda out: F.cross_entropy(out.flatten(0, 1), target.flatten())
    )
    assert_matches(diagnose(client, body), hessian, sizes, 123, options)


LESSON_CURVATURE = {
    "model": {"kind": "mlp", "layer_sizes": [3, 3, 3, 3, 3, 1], "activation": "gelu_tanh",
              "shortcut": True},
    "input": [[1.0, 0.0, -1.0]],
    "target": [[0.0]],
    "seed": 123,
}  # fmt: skip


def test_learning_rate_against_two(client):
    body = LESSON_CURVATURE | {"curvature": {"top_eigenvalues": 2, "learning_rate": 10.0}}
    curvature = (report := diagnose(client, body))["curvature"]
    product = 10.0 * max(curvature["top_eigenvalues"])
    assert close(curvature["lr_times_lambda_max"], product, rel=1e-12)
    verb = "would diverge" if product > 2 else "is stable"
    findings = [f for f in report["diagnosis"]["findings"] if f.startswith("lr 10 ")]
    assert findings and verb in findings[0], report["diagnosis"]["findings"]
    small = diagnose(client, LESSON_CURVATURE | {"curvature": {"learning_rate": 1e-6}})
    assert any("is stable" in f for f in small["diagnosis"]["findings"])
    assert "curvature" not in diagnose(client, LESSON_CURVATURE)


def test_sections_only_when_asked_and_the_cached_model_is_restored(make_client):
    # BN in training mode and dropout: the extra passes neither move the running statistics
    # nor the masks of a later run, nor the run's own gradients.
    body = {
        "model": {
            "kind": "sequential",
            "layers": [
                {"type": "linear", "out_features": 8},
                {"type": "batch_norm"},
                {"type": "dropout", "p": 0.5},
                {"type": "linear", "out_features": 2},
            ],
        },
        "input": {"shape": [6, 4], "distribution": "normal", "seed": 1},
        "target": {"shape": [6, 2], "distribution": "normal", "seed": 2},
        "seed": 9,
        "mode": "train",
    }
    cached, fresh = make_client(), make_client(model_cache_bytes=0)
    plain = fresh.post(URL, json=body).json()
    assert "curvature" not in plain and "precision" not in plain
    extended = body | {"curvature": {"trace_samples": 4}, "precision_check": True}
    first = cached.post(URL, json=extended).json()
    for key in ("parameters", "layers", "loss"):
        assert first[key] == plain[key]
    again = cached.post(URL, json=extended).json()
    for key in ("curvature", "precision"):
        assert {k: v for k, v in again[key].items() if k != "time_ms"} == {
            k: v for k, v in first[key].items() if k != "time_ms"
        }
    for mode in ("train", "eval"):
        after = cached.post(URL, json=body | {"mode": mode}).json()
        expected = fresh.post(URL, json=body | {"mode": mode}).json()
        assert after["parameters"] == expected["parameters"]
        assert after["layers"] == expected["layers"]


def test_with_the_backward_cancellation_hooks(client, monkeypatch):
    # Models above CANCEL_POINTS_MIN_FLOPS hook every reported output in the batch pass.
    from service.diagnostics import run

    body = LESSON_CURVATURE | {"curvature": {"top_eigenvalues": 2, "trace_samples": 8}}
    expected = diagnose(client, body)["curvature"]
    monkeypatch.setattr(run, "CANCEL_POINTS_MIN_FLOPS", 0)
    got = diagnose(client, body)["curvature"]
    assert {k: v for k, v in got.items() if k != "time_ms"} == {
        k: v for k, v in expected.items() if k != "time_ms"
    }


def test_options_are_checked(client):
    cases: list[tuple[dict, list]] = [
        ({"top_eigenvalues": 0}, ["body", "curvature", "top_eigenvalues"]),
        ({"trace_samples": 2000}, ["body", "curvature", "trace_samples"]),
        ({"tolerance": 0}, ["body", "curvature", "tolerance"]),
        ({"learning_rate": -1.0}, ["body", "curvature", "learning_rate"]),
        ({"power": 3}, ["body", "curvature", "power"]),
        ({"top_eigenvalues": 30}, ["body", "curvature", "top_eigenvalues"]),  # 28 parameters
    ]
    small = LESSON_CURVATURE | {"model": {"kind": "mlp", "layer_sizes": [3, 3, 3, 1]}}
    small = small | {"target": [[0.0]]}
    for options, loc in cases:
        response = client.post(URL, json=small | {"curvature": options})
        assert response.status_code == 422, (options, response.text)
        problem = response.json()
        assert problem["errors"][0]["loc"] == loc, (options, problem)


def test_compare_and_sweeps_take_the_option(client):
    base = LESSON_CURVATURE | {"curvature": {"trace_samples": 4, "learning_rate": 0.1}}
    compare = client.post(
        "/v1/diagnostics/compare",
        json={"base": base, "variants": {"with": {}, "without": {"curvature": None}}},
    )
    assert compare.status_code == 200, compare.text
    runs = compare.json()["runs"]
    assert "curvature" in runs["with"] and "curvature" not in runs["without"]
    sweep = client.post(
        "/v1/sweeps",
        json={"base": base, "axes": [{"path": "curvature.learning_rate", "values": [0.1, 10.0]}]},
    )
    assert sweep.status_code == 200, sweep.text


def flops_of(client, body):
    """The budget's estimate of a request's FLOPs (asked with a limit of 1)."""
    problem = client.post(URL, json=body).json()
    assert problem["code"] == "budget_exceeded"
    return problem["estimate"]["flops"], problem["estimate"]["memory_bytes"]


def test_budget_counts_every_product(make_client):
    from service.diagnostics.plan import PRODUCT_MIN_FLOPS

    probe = make_client(limits={"max_flops": 1, "max_memory_bytes": 1})
    run_flops, run_bytes = flops_of(probe, LESSON_CURVATURE)
    # The batch pass, ∇L with its graph, two passes' worth per product (the lesson's model
    # is small enough for each product to cost its overhead instead).
    product = max(2 * run_flops, PRODUCT_MIN_FLOPS)
    options = {"top_eigenvalues": 2, "max_iterations": 30, "trace_samples": 8}
    flops, memory = flops_of(probe, LESSON_CURVATURE | {"curvature": options})
    assert flops == 2 * run_flops + product * (2 * 30 + 8)
    assert memory > run_bytes
    # per layer: min(2, size) more per tensor: 5 weights (9 or 3 numbers) and 4 biases of
    # 3 numbers take 2, the last bias 1
    layered, _ = flops_of(probe, LESSON_CURVATURE | {"curvature": options | {"per_layer": True}})
    assert layered == 2 * run_flops + product * ((2 + 5 * 2 + 4 * 2 + 1) * 30 + 8)
    wide = LESSON_CURVATURE | {"input": {"shape": [16384, 3], "distribution": "normal"}}
    wide |= {"target": {"shape": [16384, 1], "distribution": "zeros"}}
    wide_flops, _ = flops_of(probe, wide)
    assert 2 * wide_flops > PRODUCT_MIN_FLOPS
    assert flops_of(probe, wide | {"curvature": options})[0] == wide_flops * (2 + 2 * 68)
    limited = make_client(limits={"max_flops": product * 10})
    assert limited.post(URL, json=LESSON_CURVATURE).status_code == 200
    refused = limited.post(URL, json=LESSON_CURVATURE | {"curvature": options})
    assert refused.status_code == 422 and refused.json()["exceeded"] == ["flops"]
    tight = make_client(limits={"max_memory_bytes": run_bytes + 1})
    assert tight.post(URL, json=LESSON_CURVATURE).status_code == 200
    refused = tight.post(URL, json=LESSON_CURVATURE | {"curvature": options})
    assert refused.status_code == 422 and refused.json()["exceeded"] == ["memory_bytes"]


def test_compare_counts_curvature_against_its_total(make_client):
    probe = make_client(limits={"max_flops": 1})
    base = LESSON_CURVATURE | {"curvature": {"max_iterations": 30, "trace_samples": 0}}
    flops, _ = flops_of(probe, base)
    client = make_client(limits={"max_flops": 3 * flops})
    ok = client.post("/v1/diagnostics/compare", json={"base": base, "variants": {"a": {}}})
    assert ok.status_code == 200, ok.text
    both = {"base": base, "variants": {"a": {}, "b": {"seed": 1}, "c": {"seed": 2}, "d": {}}}
    refused = client.post("/v1/diagnostics/compare", json=both)
    assert refused.status_code == 422 and refused.json()["code"] == "budget_exceeded"


def test_a_long_curvature_run_stops_when_cancelled():
    from concurrent.futures import ThreadPoolExecutor

    from service.config import Limits
    from service.diagnostics.model_cache import ModelCache
    from service.diagnostics.plan import plan_run
    from service.diagnostics.run import run
    from service.errors import Cancelled
    from service.runtime import load_statistics
    from service.schemas.requests import DiagnosticsRequest

    # 32 eigenvalues at up to 1000 iterations each, converging to 1e-15 in float64: minutes
    # of products, but for the cancel.
    options = {"top_eigenvalues": 32, "max_iterations": 1000, "tolerance": 1e-15}
    body = {
        "model": {"kind": "mlp", "layer_sizes": [32, 64, 64, 1], "activation": "tanh"},
        "input": {"shape": [64, 32], "distribution": "normal"},
        "target": {"shape": [64, 1], "distribution": "normal"},
        "dtype": "float64",
        "curvature": options,
    }
    request = DiagnosticsRequest.model_validate(body)
    plan = plan_run(
        request, default_device="cpu", allowed_devices={"cpu"}, default_dtype="float32",
        limits=Limits(max_flops=10**15),
    )  # fmt: skip
    side = ThreadPoolExecutor(1)
    cache = ModelCache(1 << 30, 16, load_statistics(True), side)
    cancel = threading.Event()
    timer = threading.Timer(0.5, cancel.set)
    started = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(Cancelled):
            run(plan, cancel, cache)
    finally:
        timer.cancel()
        side.shutdown()
    assert time.perf_counter() - started < 5
    assert cache.idle_entries == 1  # checked back in, reset
    model = cache.checkout(plan, threading.Event())
    assert all(p.grad is None for _, p in model.named_parameters)
    assert not model.capture.muted


def test_extra_passes_leave_batch_norm_statistics_alone():
    from concurrent.futures import ThreadPoolExecutor

    from service.config import Limits
    from service.diagnostics.model_cache import ModelCache
    from service.diagnostics.plan import plan_run
    from service.diagnostics.replay import replaying
    from service.runtime import load_statistics
    from service.schemas.requests import DiagnosticsRequest

    body = {
        "model": {"kind": "sequential", "layers": [
            {"type": "linear", "out_features": 4}, {"type": "batch_norm"},
            {"type": "dropout", "p": 0.5},
        ]},
        "input": {"shape": [6, 3], "distribution": "normal"},
        "loss": "sum",
    }  # fmt: skip
    plan = plan_run(
        DiagnosticsRequest.model_validate(body), default_device="cpu", allowed_devices={"cpu"},
        default_dtype="float32", limits=Limits(),
    )  # fmt: skip
    side = ThreadPoolExecutor(1)
    cache = ModelCache(1 << 30, 4, load_statistics(True), side)
    model = cache.checkout(plan, threading.Event())
    inputs = normal((6, 3), 0)
    first = model.module(inputs)
    buffers = [b.clone() for b in model.module.buffers()]
    assert int(buffers[-1]) == 1  # num_batches_tracked: the batch pass counted
    for _ in range(2):
        with replaying(model):
            again = model.module(inputs)
        assert torch.equal(again, first)  # the batch pass's masks and batch statistics
    for before, after in zip(buffers, model.module.buffers(), strict=True):
        assert torch.equal(before, after)
    cache.checkin(model)
    side.shutdown()
