"""Losses and their options against torch.nn.functional with the same options, on plain
PyTorch models (loss and every parameter's gradient, tests/test_parity_architectures.py's
tolerance); where cross_entropy's classes lie; option errors as problems with their field;
layers before the first one with parameters are not measured."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from service.schemas.models import GPT_PRESETS
from tests.conftest import close
from tests.reference_gpt import GPTModel
from tests.test_errors import assert_problem
from tests.test_parity_architectures import REL, Net, assert_parity, build, diagnose, normal

URL = "/v1/diagnostics"
FUNCTIONS = {
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "smooth_l1": F.smooth_l1_loss,
    "cross_entropy": F.cross_entropy,
    "bce_with_logits": F.binary_cross_entropy_with_logits,
}
LAYERS = [
    {"type": "linear", "out_features": 6},
    {"type": "tanh"},
    {"type": "linear", "out_features": 3},
]
IDS = [0, 2, 1, 2, 0]
PROBABILITIES = torch.softmax(normal((5, 3), 5), dim=1).tolist()
WEIGHT = [0.2, 1.0, 3.0]


def mlp():
    return Net(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def functional(name, output, target, options):
    """F.<loss>(output, target, **options), the lists of the request as tensors."""
    kwargs = {
        key: torch.tensor(value, dtype=output.dtype) if key in ("weight", "pos_weight") else value
        for key, value in options.items()
    }
    return FUNCTIONS[name](output, target, **kwargs)


CASES = {
    # name: (loss name, options, target: "normal", "uniform" (probabilities), or a literal)
    "mse_mean": ("mse", {}, "normal"),
    "mse_sum": ("mse", {"reduction": "sum"}, "normal"),
    "l1_sum": ("l1", {"reduction": "sum"}, "normal"),
    "smooth_l1_beta": ("smooth_l1", {"beta": 0.5}, "normal"),
    "smooth_l1_beta_0_sum": ("smooth_l1", {"beta": 0.0, "reduction": "sum"}, "normal"),
    "smooth_l1_beta_wide": ("smooth_l1", {"beta": 3.0}, "normal"),
    "bce_pos_weight_number": ("bce_with_logits", {"pos_weight": 2.5}, "uniform"),
    "bce_pos_weight_per_column": ("bce_with_logits", {"pos_weight": [0.5, 1.0, 3.0]}, "uniform"),
    "bce_pos_weight_one_sum": (
        "bce_with_logits",
        {"pos_weight": [2.0], "reduction": "sum"},
        "uniform",
    ),
    "ce_sum": ("cross_entropy", {"reduction": "sum"}, IDS),
    "ce_weight": ("cross_entropy", {"weight": WEIGHT}, IDS),
    "ce_ignore_index": ("cross_entropy", {"ignore_index": 2}, IDS),
    "ce_negative_ignore_index": ("cross_entropy", {"ignore_index": -1}, [0, -1, 1, -1, 2]),
    "ce_default_ignore_index": ("cross_entropy", {}, [0, -100, 1, 2, 2]),
    "ce_label_smoothing": ("cross_entropy", {"label_smoothing": 0.2}, IDS),
    "ce_all_options_sum": (
        "cross_entropy",
        {"weight": WEIGHT, "ignore_index": 0, "label_smoothing": 0.1, "reduction": "sum"},
        IDS,
    ),
    "ce_weight_ignore_smoothing_mean": (
        "cross_entropy",
        {"weight": WEIGHT, "ignore_index": 1, "label_smoothing": 0.3},
        IDS,
    ),
    "ce_probabilities_weight_smoothing": (
        "cross_entropy",
        {"weight": WEIGHT, "label_smoothing": 0.3},
        PROBABILITIES,
    ),
    "ce_probabilities_sum": ("cross_entropy", {"reduction": "sum"}, PROBABILITIES),
}


@pytest.mark.parametrize("case", CASES)
def test_loss_options_equal_torch_functional(client, case):
    name, options, target = CASES[case]
    if target == "normal":
        body_target = {"shape": [5, 3], "distribution": "normal", "seed": 4}
        tensor = normal((5, 3), 4)
    elif target == "uniform":
        body_target = {"shape": [5, 3], "distribution": "uniform", "seed": 4}
        tensor = torch.rand((5, 3), generator=torch.Generator().manual_seed(4))
    else:
        body_target = target
        ids = not isinstance(target[0], list)
        tensor = torch.tensor(target, dtype=torch.int64 if ids else torch.float32)
    body = {
        "model": {"kind": "sequential", "layers": LAYERS},
        "input": {"shape": [5, 4], "distribution": "normal", "seed": 3},
        "target": body_target,
        "loss": {"name": name, **options},
        "seed": 7,
    }
    model = build(7, mlp)
    loss = functional(name, model(normal((5, 4), 3)), tensor, options)
    loss.backward()
    assert_parity(diagnose(client, body), model, loss)


def test_the_sum_loss_and_a_name_alone(client):
    body = {
        "model": {"kind": "sequential", "layers": LAYERS},
        "input": {"shape": [5, 4], "distribution": "normal", "seed": 3},
        "seed": 7,
    }
    model = build(7, mlp)
    loss = model(normal((5, 4), 3)).sum()
    loss.backward()
    assert_parity(diagnose(client, body | {"loss": {"name": "sum"}}), model, loss)
    # A name is the loss with PyTorch's defaults: the same numbers as the object.
    named = diagnose(client, body | {"loss": "cross_entropy", "target": IDS})
    spelled = {"name": "cross_entropy", "reduction": "mean", "ignore_index": -100}
    full = diagnose(client, body | {"loss": spelled | {"label_smoothing": 0.0}, "target": IDS})
    assert named["loss"] == full["loss"]
    assert [p["grad"] for p in named["parameters"]] == [p["grad"] for p in full["parameters"]]


def test_float64_class_weights(client):
    options = {"weight": WEIGHT, "label_smoothing": 0.1}
    body = {
        "model": {"kind": "sequential", "layers": LAYERS},
        "input": {"shape": [5, 4], "distribution": "normal", "seed": 3},
        "target": IDS,
        "loss": {"name": "cross_entropy", **options},
        "seed": 7,
        "dtype": "float64",
    }
    model = build(7, mlp).double()
    output = model(normal((5, 4), 3).double())
    loss = functional("cross_entropy", output, torch.tensor(IDS), options)
    loss.backward()
    report = diagnose(client, body)
    assert close(report["loss"], loss.item(), rel=1e-12)
    assert_parity(report, model, loss)


# Where the classes lie: dimension 1, as F.cross_entropy takes them.
CONV1D = [
    {"type": "conv1d", "out_channels": 5, "kernel_size": 3},
    {"type": "relu"},
    {"type": "conv1d", "out_channels": 4, "kernel_size": 1},
]


def conv1d():
    return Net(nn.Conv1d(3, 5, 3), nn.ReLU(), nn.Conv1d(5, 4, 1))


def test_classes_in_dimension_1_of_n_c_l(client):
    """(N, C, L) = (2, 4, 6) logits: class ids (N, L) in [0, C), as F.cross_entropy."""
    target = torch.randint(0, 4, (2, 6), generator=torch.Generator().manual_seed(6))
    target[0, 2] = 3  # some of them ignored
    options = {"weight": [1.0, 0.5, 2.0, 0.25], "ignore_index": 3, "label_smoothing": 0.1}
    body = {
        "model": {"kind": "sequential", "layers": CONV1D},
        "input": {"shape": [2, 3, 8], "distribution": "normal", "seed": 3},
        "target": target.tolist(),
        "loss": {"name": "cross_entropy", **options},
        "seed": 11,
    }
    model = build(11, conv1d)
    loss = functional("cross_entropy", model(normal((2, 3, 8), 3)), target, options)
    loss.backward()
    report = diagnose(client, body)
    assert report["output_shape"] == [2, 4, 6]
    assert_parity(report, model, loss)


CONV2D = [
    {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
    {"type": "tanh"},
    {"type": "conv2d", "out_channels": 3, "kernel_size": 3},
]


def conv2d():
    return Net(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 3))


@pytest.mark.parametrize("form", ["ids", "probabilities"])
def test_classes_in_dimension_1_of_n_c_h_w(client, form):
    """(N, C, H, W) = (2, 3, 4, 4) logits: class ids (N, H, W), or probabilities of the
    output's shape, as F.cross_entropy takes them."""
    if form == "ids":
        target = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(6))
        options = {"weight": [0.5, 1.0, 2.0], "reduction": "sum"}
    else:
        target = torch.softmax(normal((2, 3, 4, 4), 6), dim=1)
        options = {"label_smoothing": 0.2}
    body = {
        "model": {"kind": "sequential", "layers": CONV2D},
        "input": {"shape": [2, 1, 6, 6], "distribution": "normal", "seed": 3},
        "target": target.tolist(),
        "loss": {"name": "cross_entropy", **options},
        "seed": 13,
    }
    model = build(13, conv2d)
    loss = functional("cross_entropy", model(normal((2, 1, 6, 6), 3)), target, options)
    loss.backward()
    assert_parity(diagnose(client, body), model, loss)


def test_classes_last_for_gpt_with_options(client):
    """gpt keeps the course's convention: (B, T, V) logits flattened to (B*T, V)."""
    cfg = GPT_PRESETS["gpt-micro"]
    ids = torch.randint(0, 16, (2, 6), generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 16, (2, 6), generator=torch.Generator().manual_seed(2))
    weight = torch.linspace(0.5, 2.0, 16)
    options = {"weight": weight.tolist(), "ignore_index": int(target[0, 0]), "label_smoothing": 0.1}
    body = {
        "model": {"kind": "gpt", "preset": "gpt-micro"},
        "input": ids.tolist(),
        "target": target.tolist(),
        "loss": {"name": "cross_entropy", **options},
        "seed": 123,
    }
    torch.manual_seed(123)
    model = GPTModel(cfg, "pre", True)
    logits = model(ids)
    loss = functional("cross_entropy", logits.flatten(0, 1), target.flatten(), options)
    loss.backward()
    assert_parity(diagnose(client, body), model, loss)


def test_class_ids_in_the_old_layout_are_refused_with_the_convention(client):
    body = {
        "model": {"kind": "sequential", "layers": CONV1D},
        "input": {"shape": [2, 3, 8], "distribution": "normal", "seed": 3},
        "target": [[0] * 4] * 2,  # (N, C): ids as if the classes were last
        "loss": "cross_entropy",
    }
    problem = assert_problem(client.post(URL, json=body), 422, "shape_mismatch", ["body", "target"])
    assert "[2, 6] (class ids)" in problem["detail"] and "dimension 1" in problem["detail"]


def test_class_ids_are_checked_against_dimension_1(client):
    body = {
        "model": {"kind": "sequential", "layers": CONV1D},
        "input": {"shape": [2, 3, 8], "distribution": "normal", "seed": 3},
        "target": [[0, 1, 2, 3, 4, 0], [0] * 6],  # 4 classes: 4 is outside
        "loss": "cross_entropy",
    }
    problem = assert_problem(
        client.post(URL, json=body), 422, "invalid_tensor", ["body", "target", 0, 4]
    )
    assert "outside [0, 4)" in problem["detail"] and "dimension 1" in problem["detail"]
    generated = body | {"target": {"shape": [2, 6], "distribution": "randint", "high": 5}}
    assert_problem(
        client.post(URL, json=generated), 422, "invalid_tensor", ["body", "target", "high"]
    )


BASE = {
    "model": {"kind": "sequential", "layers": LAYERS},
    "input": {"shape": [5, 4], "distribution": "normal", "seed": 3},
    "target": IDS,
    "seed": 7,
}
ERRORS = {
    # name: (loss, target (None: none, "float": uniform of the output's shape), code, loc)
    "option_not_taken": ({"name": "mse", "beta": 1.0}, "float", "invalid_request", ["beta"]),
    "ce_option_on_bce": (
        {"name": "bce_with_logits", "label_smoothing": 0.1},
        "float",
        "invalid_request",
        ["label_smoothing"],
    ),
    "sum_takes_no_reduction": ({"name": "sum", "reduction": "mean"}, None, "invalid_request",
                               ["reduction"]),
    "unknown_reduction": ({"name": "mse", "reduction": "none"}, "float", "invalid_request",
                          ["reduction"]),
    "unknown_name": ({"name": "hinge"}, IDS, "invalid_request", ["name"]),
    "missing_name": ({"reduction": "sum"}, IDS, "invalid_request", ["name"]),
    "weight_wrong_length": ({"name": "cross_entropy", "weight": [1.0, 2.0]}, IDS,
                            "shape_mismatch", ["weight"]),
    "weight_negative": ({"name": "cross_entropy", "weight": [1.0, -2.0, 1.0]}, IDS,
                        "invalid_request", ["weight", 1]),
    "label_smoothing_above_1": ({"name": "cross_entropy", "label_smoothing": 1.5}, IDS,
                                "invalid_request", ["label_smoothing"]),
    "ignore_index_beyond_int64": ({"name": "cross_entropy", "ignore_index": 2**70}, IDS,
                                  "invalid_request", ["ignore_index"]),
    "probabilities_with_ignore_index": ({"name": "cross_entropy", "ignore_index": 0},
                                        PROBABILITIES, "invalid_request", ["ignore_index"]),
    "probabilities_with_negative_ignore_index": (
        {"name": "cross_entropy", "ignore_index": -1}, PROBABILITIES, "invalid_request",
        ["ignore_index"]),
    "pos_weight_wrong_length": ({"name": "bce_with_logits", "pos_weight": [1.0, 2.0]}, "float",
                                "shape_mismatch", ["pos_weight"]),
    "beta_negative": ({"name": "smooth_l1", "beta": -1.0}, "float", "invalid_request", ["beta"]),
    "beta_a_string": ({"name": "smooth_l1", "beta": "1"}, "float", "invalid_request", ["beta"]),
}  # fmt: skip


@pytest.mark.parametrize("case", ERRORS)
def test_option_errors_name_their_field(client, case):
    loss, target, code, where = ERRORS[case]
    body = BASE | {"loss": loss}
    if target is None:
        body.pop("target")
    elif target == "float":
        body["target"] = {"shape": [5, 3], "distribution": "uniform"}
    else:
        body["target"] = target
    assert_problem(client.post(URL, json=body), 422, code, ["body", "loss", *where])


def test_ids_outside_the_classes_and_not_ignored_are_refused(client):
    body = BASE | {"loss": {"name": "cross_entropy", "ignore_index": 7}, "target": [7, 0, 9, 7, 1]}
    problem = assert_problem(
        client.post(URL, json=body), 422, "invalid_tensor", ["body", "target", 2]
    )
    assert "9 is outside [0, 3) and is not ignore_index 7" in problem["detail"]
    ignored = body | {"target": [7, 0, 2, 7, 1]}
    assert client.post(URL, json=ignored).status_code == 200


def test_compare_variant_errors_name_the_variant(client):
    body = {"base": BASE | {"loss": "cross_entropy"},
            "variants": {"plain": {}, "bad": {"loss": {"weight": [1.0]}}}}  # fmt: skip
    assert_problem(
        client.post("/v1/diagnostics/compare", json=body),
        422,
        "shape_mismatch",
        ["body", "variants", "bad", "loss", "weight"],
    )


SMOOTHING = [0.0, 0.1, 0.5]


def reference_smoothed(smoothing):
    model = build(7, mlp)
    return F.cross_entropy(model(normal((5, 4), 3)), torch.tensor(IDS), label_smoothing=smoothing)


@pytest.mark.parametrize("base_loss", ["cross_entropy", {"name": "cross_entropy"}])
def test_sweep_over_label_smoothing(client, base_loss):
    """An axis sets one option of the loss, whether the base names the loss or spells it."""
    body = {"base": BASE | {"loss": base_loss},
            "axes": [{"path": "loss.label_smoothing", "values": SMOOTHING}]}  # fmt: skip
    response = client.post("/v1/sweeps", json=body)
    assert response.status_code == 200, response.text
    runs = response.json()["runs"]
    assert [run["axes"]["loss.label_smoothing"] for run in runs] == SMOOTHING
    for run, smoothing in zip(runs, SMOOTHING, strict=True):
        assert close(run["loss"], reference_smoothed(smoothing).item(), rel=REL)
        single = BASE | {"loss": {"name": "cross_entropy", "label_smoothing": smoothing}}
        assert run["loss"] == diagnose(client, single)["loss"]
    assert len({run["loss"] for run in runs}) == len(SMOOTHING)  # the option took effect


def test_compare_patches_a_loss_option(client):
    variants = {
        "plain": {},
        "smoothed": {"loss": {"label_smoothing": 0.1}},
        "summed": {"loss": {"name": "cross_entropy", "reduction": "sum"}},
    }
    body = {"base": BASE | {"loss": "cross_entropy"}, "variants": variants}
    response = client.post("/v1/diagnostics/compare", json=body)
    assert response.status_code == 200, response.text
    runs = response.json()["runs"]
    assert close(runs["plain"]["loss"], reference_smoothed(0.0).item(), rel=REL)
    assert close(runs["smoothed"]["loss"], reference_smoothed(0.1).item(), rel=REL)
    assert close(runs["summed"]["loss"], 5 * reference_smoothed(0.0).item(), rel=REL)


def test_capabilities_list_each_loss_with_its_options(client):
    capabilities = client.get("/v1/capabilities").json()
    options = capabilities["loss_options"]
    assert list(options) == capabilities["losses"]
    fields = {name: set(schema["properties"]) - {"name"} for name, schema in options.items()}
    assert fields == {
        "mse": {"reduction"},
        "l1": {"reduction"},
        "smooth_l1": {"reduction", "beta"},
        "cross_entropy": {"reduction", "weight", "ignore_index", "label_smoothing"},
        "bce_with_logits": {"reduction", "pos_weight"},
        "sum": set(),
    }
    assert all(schema["additionalProperties"] is False for schema in options.values())
    assert "not_measured" in capabilities["verdicts"]


# Layers before the first one with parameters: nothing requires grad there.
UNMEASURED = [
    {"type": "tanh"},
    {"type": "flatten"},
    {"type": "dropout", "p": 0.1},
    {"type": "linear", "out_features": 4},
    {"type": "relu"},
    {"type": "linear", "out_features": 3},
]


def test_layers_before_the_first_parameters_are_not_measured(client):
    body = {
        "model": {"kind": "sequential", "layers": UNMEASURED},
        "input": {"shape": [5, 2, 3], "distribution": "normal", "seed": 1},
        "target": IDS,
        "loss": "cross_entropy",
        "seed": 3,
        "mode": "eval",
    }
    model = build(3, lambda: Net(
        nn.Tanh(), nn.Flatten(), nn.Dropout(0.1), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3),
    )).eval()  # fmt: skip
    outputs = []
    for layer in model.layers:
        layer.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    loss = F.cross_entropy(model(normal((5, 2, 3), 1)), torch.tensor(IDS))
    for out in outputs:
        if out.requires_grad:
            out.retain_grad()
    loss.backward()
    assert [out.grad is None for out in outputs] == [True] * 3 + [False] * 3

    report = diagnose(client, body)
    assert_parity(report, model, loss)
    layers = report["layers"]
    assert [layer["verdict"] for layer in layers] == ["not_measured"] * 3 + ["healthy"] * 3
    assert all(layer["output_grad"] is None for layer in layers[:3])
    first, last = outputs[3].grad.abs().mean().item(), outputs[5].grad.abs().mean().item()
    diagnosis = report["diagnosis"]
    assert diagnosis["verdict"] == "healthy"
    assert close(diagnosis["first_to_last_ratio"], first / last, rel=REL)
    findings = diagnosis["findings"]
    assert findings[0].startswith("3 of 6 layers not measured: layers.0, layers.1, layers.2")
    assert "nothing before them requires grad" in findings[0]
    assert findings[1].startswith("all 3 measured layers within [0.01, 100]x")
    assert not any(finding.startswith("all 6") for finding in findings)


def test_a_layer_with_parameters_first_measures_every_layer(client):
    body = BASE | {"loss": "cross_entropy"}
    report = diagnose(client, body)
    assert "not_measured" not in [layer["verdict"] for layer in report["layers"]]
    assert any(f.startswith("all 3 layers within") for f in report["diagnosis"]["findings"])
    assert not any("not measured" in f for f in report["diagnosis"]["findings"])
