"""The precision check against a float64 run of the plain model, and the rounding-noise
finding against gradients that are zero in exact arithmetic.

Tolerances: the float64 reference loss within 1e-12 relative of the plain model's float64
loss (1e-10 with dropout, whose masks are replayed by hand here); relative errors within
1e-6 relative of the plain model's (bfloat16, where they are ~1e-2) or 3e-7 absolute
(float32, where they are ~1e-7 and the last bits of the two float32 runs may differ).
"""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tests.conftest import close
from tests.reference import ExampleDeepNeuralNetwork
from tests.reference_gpt import GPTModel

URL = "/v1/diagnostics"


def normal(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def diagnose(client, body):
    response = client.post(URL, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def relative(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


MLP = {
    "model": {"kind": "mlp", "layer_sizes": [4, 16, 16, 2], "activation": "tanh"},
    "input": {"shape": [8, 4], "distribution": "normal", "seed": 1},
    "target": {"shape": [8, 2], "distribution": "normal", "seed": 2},
    "seed": 3,
    "precision_check": True,
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_mlp_against_the_plain_model_in_float64(client, dtype):
    torch.manual_seed(3)
    run_dtype = getattr(torch, dtype)
    model = ExampleDeepNeuralNetwork([4, 16, 16, 2], False, nn.Tanh).to(run_dtype)
    reference = copy.deepcopy(model).double()  # the run's weights, upcast
    inputs, target = normal((8, 4), 1), normal((8, 2), 2)
    loss = F.mse_loss(model(inputs.to(run_dtype)), target.to(run_dtype))
    loss.backward()
    loss64 = F.mse_loss(reference(inputs.to(run_dtype).double()), target.to(run_dtype).double())
    loss64.backward()
    report = diagnose(client, MLP | {"dtype": dtype})
    precision = report["precision"]
    assert precision["dtype"] == dtype and not precision["run_is_reference"]
    assert close(precision["reference_loss"], loss64.item(), rel=1e-12)
    assert close(precision["loss"], abs(loss.item() - loss64.item()) / loss64.item(), rel=1e-6)
    pairs = zip(
        precision["parameters"], model.named_parameters(), reference.parameters(), strict=True
    )
    errors = []
    for entry, (name, param), param64 in pairs:
        assert entry["name"] == name and not entry["zero_by_construction"]
        g, g64 = param.grad, param64.grad
        expected = {
            "grad": relative(g, g64),
            "mean_abs": abs(g.double().abs().mean() / g64.abs().mean() - 1).item(),
            "l2_norm": abs(g.double().norm() / g64.norm() - 1).item(),
            "max_abs": abs(g.double().abs().max() / g64.abs().max() - 1).item(),
        }
        for key, value in expected.items():
            if dtype == "bfloat16":
                assert close(entry[key], value, rel=1e-6, abs_=1e-9), (name, key, entry, value)
            else:
                assert abs(entry[key] - value) <= 3e-7 and entry[key] < 1e-5, (name, key)
        errors.append(expected["grad"])
    assert close(precision["max_grad_error"], max(errors), rel=1e-6, abs_=3e-7)
    trusted = max(errors) <= 1e-2 and precision["loss"] <= 1e-2
    assert precision["trusted"] is trusted and precision["threshold"] == 1e-2
    findings = report["diagnosis"]["findings"]
    said = "agrees with float64" if trusted else "is not to be trusted"
    assert any(f.startswith(f"{dtype} {said}") for f in findings), findings


def test_gpt_in_bfloat16_with_dropout_replays_the_runs_masks(client):
    # The float64 pass must draw the batch pass's masks again (here by hand: recorded from
    # the bfloat16 pass, applied to the upcast model).
    from service.schemas.models import GPT_PRESETS

    cfg = GPT_PRESETS["gpt-micro"] | {"drop_rate": 0.2}
    ids = torch.randint(0, 16, (2, 8), generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 16, (2, 8), generator=torch.Generator().manual_seed(2))
    body = {
        "model": {"kind": "gpt", "preset": "gpt-micro", "drop_rate": 0.2},
        "input": ids.tolist(),
        "target": target.tolist(),
        "loss": "cross_entropy",
        "seed": 123,
        "dtype": "bfloat16",
        "precision_check": True,
    }
    torch.manual_seed(123)
    model = GPTModel(cfg).to(torch.bfloat16)  # its masks continue the stream from here
    masks = []

    def record(module, args, output):
        masks.append((output != 0) | (args[0] == 0))  # where the input is 0, any mask

    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    handles = [m.register_forward_hook(record) for m in dropouts]
    loss = F.cross_entropy(model(ids).flatten(0, 1), target.flatten())
    for handle in handles:
        handle.remove()
    reference = copy.deepcopy(model).double()
    replayed = iter(masks)

    def replay(module, args, output):
        return args[0] * next(replayed).double() / (1 - module.p)

    for module in reference.modules():
        if isinstance(module, nn.Dropout):
            module.register_forward_hook(replay)
    loss64 = F.cross_entropy(reference(ids).flatten(0, 1), target.flatten())
    report = diagnose(client, body)
    assert close(report["loss"], loss.item(), rel=1e-6)
    precision = report["precision"]
    assert close(precision["reference_loss"], loss64.item(), rel=1e-10)
    assert precision["max_grad_error"] < 0.1  # other masks: errors of order 1


def test_a_float64_run_is_its_own_reference(client):
    report = diagnose(client, MLP | {"dtype": "float64"})
    precision = report["precision"]
    assert precision["run_is_reference"] and precision["trusted"]
    assert precision["parameters"] == [] and precision["reference_loss"] == report["loss"]
    assert not any("float64" in f for f in report["diagnosis"]["findings"])


def test_budget_counts_the_float64_pass(make_client):
    probe = make_client(limits={"max_flops": 1, "max_memory_bytes": 1})

    def estimate(body):
        problem = probe.post(URL, json=body).json()
        return problem["estimate"]["flops"], problem["estimate"]["memory_bytes"]

    plain = {k: v for k, v in MLP.items() if k != "precision_check"}
    flops, memory = estimate(plain)
    checked_flops, checked_memory = estimate(MLP)
    assert checked_flops == 2 * flops and checked_memory > memory
    assert estimate(MLP | {"dtype": "float64"}) == estimate(plain | {"dtype": "float64"})
    tight = make_client(limits={"max_memory_bytes": memory + 1})
    assert tight.post(URL, json=plain).status_code == 200
    refused = tight.post(URL, json=MLP)
    assert refused.status_code == 422 and refused.json()["exceeded"] == ["memory_bytes"]


# Rounding noise ------------------------------------------------------------------------------


def noise_findings(report):
    return [f for f in report["diagnosis"]["findings"] if "rounding noise" in f]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_attention_key_bias_is_rounding_noise(client, dtype):
    from service.schemas.models import GPT_PRESETS

    cfg = GPT_PRESETS["gpt-tiny"] | {"qkv_bias": True}
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(2))
    body = {
        "model": {"kind": "gpt", "preset": "gpt-tiny", "qkv_bias": True},
        "input": ids.tolist(),
        "target": target.tolist(),
        "loss": "cross_entropy",
        "seed": 4,
        "dtype": dtype,
        "precision_check": dtype == "float32",
    }
    torch.manual_seed(4)
    model = GPTModel(cfg).double()
    F.cross_entropy(model(ids).flatten(0, 1), target.flatten()).backward()
    largest = max(p.grad.abs().max().item() for p in model.parameters())
    keys = [f"trf_blocks.{i}.att.W_key.bias" for i in range(cfg["n_layers"])]
    grads = dict(model.named_parameters())
    for key in keys:  # zero in exact arithmetic: float64 leaves ~1e-17 of the largest
        assert grads[key].grad.abs().max().item() < 1e-14 * largest
    report = diagnose(client, body)
    findings = noise_findings(report)
    assert [f.split(":")[0] for f in findings] == keys, findings
    assert all("zero by construction, not vanishing" in f for f in findings)
    if dtype == "float32":
        flagged = [
            e["name"] for e in report["precision"]["parameters"] if e["zero_by_construction"]
        ]
        assert flagged == keys
        assert report["precision"]["trusted"]


CONV_BN = {
    "model": {
        "kind": "sequential",
        "layers": [
            {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
            {"type": "batch_norm"},
            {"type": "relu"},
            {"type": "flatten"},
            {"type": "linear", "out_features": 3},
        ],
    },
    "input": {"shape": [8, 2, 6, 6], "distribution": "normal", "seed": 3},
    "target": [0, 1, 2, 0, 1, 2, 0, 1],
    "loss": "cross_entropy",
    "seed": 6,
    "thresholds": {"metric": "param_grad"},
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_bias_before_batch_norm_is_rounding_noise_and_not_in_the_layer_metric(client, dtype):
    torch.manual_seed(6)
    conv, norm, head = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4 * 36, 3)
    model = nn.Sequential(conv, norm, nn.ReLU(), nn.Flatten(), head).to(getattr(torch, dtype))
    inputs = normal((8, 2, 6, 6), 3).to(getattr(torch, dtype))
    F.cross_entropy(model(inputs), torch.tensor(CONV_BN["target"])).backward()
    report = diagnose(client, CONV_BN | {"dtype": dtype})
    findings = noise_findings(report)
    assert [f.split(":")[0] for f in findings] == ["layers.0.bias"], findings
    # The conv layer's parameter-gradient metric is its weight's alone.
    layer = report["layers"][0]
    assert close(layer["param_grad_mean_abs"], conv.weight.grad.abs().mean().item(), rel=2e-4)
    assert layer["verdict"] == "healthy"


def test_a_vanishing_deep_sigmoid_net_is_not_rounding_noise(client):
    # 16 sigmoid layers: the first layer's gradients are ~1e-10 of the last's, computed to
    # full relative precision: vanishing, not noise.
    sizes = [8] * 16 + [1]
    body = {
        "model": {"kind": "mlp", "layer_sizes": sizes, "activation": "sigmoid"},
        "input": {"shape": [4, 8], "distribution": "normal", "seed": 1},
        "target": {"shape": [4, 1], "distribution": "zeros"},
        "seed": 2,
        "precision_check": True,
    }
    for metric in ("output_grad", "param_grad"):
        report = diagnose(client, body | {"thresholds": {"metric": metric}})
        assert noise_findings(report) == []
        assert report["layers"][0]["verdict"] == "vanishing"
        assert report["diagnosis"]["first_to_last_ratio"] < 1e-6
    torch.manual_seed(2)
    model = ExampleDeepNeuralNetwork(sizes, False, nn.Sigmoid)
    F.mse_loss(model(normal((4, 8), 1)), torch.zeros(4, 1)).backward()
    first = model.layers[0][0].weight.grad.abs().max().item()
    last = model.layers[-1][0].weight.grad.abs().max().item()
    assert first < 1e-6 * last  # tiny, and accurate: float32 agrees with float64
    assert report["precision"]["trusted"] and report["precision"]["max_grad_error"] < 1e-4
