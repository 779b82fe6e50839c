"""`per_sample: true` against independent references: a loop of B single-sample backward
passes, and torch.func (vmap of grad of each sample's loss), on plain-PyTorch models built
with torch.manual_seed; on MLPs and CNNs also BackPACK.

Float64 runs are compared to 1e-8 relative (sums of the same terms in another order), float32
runs to 1e-4 (norms, noise) and 2e-3 (GSNR medians and fractions; 1e-2 for the mean of GSNR,
where σ² = mean g² − ḡ² cancels). Each case runs
both service paths: the layers' identities, and the vmap path alone (the identities
switched off). Gradients that are zero by construction (a key bias, whose per-sample
gradients are rounding noise) are compared against the model's scale, not their own.
"""

import math
from unittest.mock import patch

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from tests.reference import GELU
from tests.reference_gpt import GPTModel, LayerNorm, MultiHeadAttention, TransformerBlock
from tests.test_parity_architectures import Net, Residual

LOSSES = {
    "mse": F.mse_loss,
    "cross_entropy": F.cross_entropy,  # classes in dimension 1
    # The gpt kind's: logits (B, T, V) flattened to (B·T, V), as the course does.
    "cross_entropy_tokens": lambda out, t: F.cross_entropy(out.flatten(0, -2), t.flatten()),
    "bce_with_logits": F.binary_cross_entropy_with_logits,
}
PATHS = ["identities", "vmap"]


class Transpose(nn.Module):
    """(N, T, C) logits to (N, C, T), where F.cross_entropy takes the classes."""

    def forward(self, x):
        return x.transpose(1, 2)


class MaskedDropout(nn.Module):
    """nn.Dropout's CPU algorithm on the global generator, its masks kept in call order; with
    `sample` set, each call applies that sample's row of the batch's mask instead."""

    def __init__(self, p):
        super().__init__()
        self.p, self.masks, self.sample, self.calls = p, [], None, 0

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        if self.sample is None:
            noise = torch.empty_like(x).bernoulli_(1 - self.p).div_(1 - self.p)
            self.masks.append(noise)
            return x * noise
        mask = self.masks[self.calls][self.sample : self.sample + 1]
        self.calls += 1
        return x * mask


def masked(model):
    """Every nn.Dropout replaced by a MaskedDropout (construction draws nothing)."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Dropout):
                setattr(module, name, MaskedDropout(child.p))
    return model


def sample_loss(loss, out, target, batch):
    """ℓ_i: sample i's loss alone (a mean over the batch is the mean of these), or B times
    its sum."""
    if loss == "sum":
        return batch * out.sum()
    return LOSSES[loss](out, target)


def loop_grads(model, inputs, target, loss):
    """Per-sample gradients by B single-sample forward and backward passes. The batch pass
    runs first: it draws the dropout masks and gives the batch loss."""
    batch = len(inputs)
    out = model(inputs)
    batch_loss = out.sum() if loss == "sum" else LOSSES[loss](out, target)
    dropouts = [m for m in model.modules() if isinstance(m, MaskedDropout)]
    named = list(model.named_parameters())
    grads = {name: [] for name, _ in named}
    for i in range(batch):
        for dropout in dropouts:
            dropout.sample, dropout.calls = i, 0
        model.zero_grad()
        one = None if target is None else target[i : i + 1]
        sample_loss(loss, model(inputs[i : i + 1]), one, batch).backward()
        for name, param in named:
            grads[name].append(param.grad.clone())
    return {name: torch.stack(g) for name, g in grads.items()}, batch_loss.item()


def func_grads(model, inputs, target, loss):
    """Per-sample gradients by torch.func: vmap of grad of ℓ_i."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    batch = len(inputs)

    def one(params, x, t):
        out = functional_call(model, (params, buffers), (x.unsqueeze(0),))
        return sample_loss(loss, out, None if t is None else t.unsqueeze(0), batch)

    dims = (None, 0, None if target is None else 0)
    return vmap(grad(one), in_dims=dims)(params, inputs, target)


def expected(grads, eps):
    """The report's numbers from per-sample gradients, by their definitions, in float64."""
    flat = {name: g.double().reshape(len(g), -1) for name, g in grads.items()}
    batch = len(next(iter(flat.values())))
    every = torch.cat(list(flat.values()), dim=1)
    mean = every.mean(0)
    sq = every.square().sum(1)
    gsq = mean.square().sum().item()
    dots = every @ mean
    centred = every - mean
    orthogonal = every - dots[:, None] / gsq * mean
    true_sq = (batch * gsq - sq.mean().item()) / (batch - 1)
    trace = centred.square().sum().item() / (batch - 1)
    per_param = {}
    for name, g in flat.items():
        m = g.mean(0)
        var = (g - m).square().mean(0)
        defined = var > 64 * eps * g.square().mean(0)
        ratio = m[defined].square() / var[defined]
        norms = g.square().sum(1).sqrt().numpy()
        per_param[name] = {
            "norms": dict(zip(["min", "p25", "median", "p75", "max"],
                              np.percentile(norms, [0, 25, 50, 75, 100]).tolist(), strict=True)),
            "gsnr_mean": ratio.mean().item() if len(ratio) else None,
            "gsnr_median": ratio.median().item() if len(ratio) % 2 else
            (ratio.sort().values[len(ratio) // 2 - 1 : len(ratio) // 2 + 1].mean().item()
             if len(ratio) else None),
            "gsnr_above_one": (ratio > 1).double().mean().item() if len(ratio) else None,
            "gsnr_elements": int(defined.sum()),
            "scale": g.abs().max().item(),
        }  # fmt: skip
    return {
        "sample_grad_norms": sq.sqrt().tolist(),
        "grad_norm": math.sqrt(gsq),
        "noise": {
            "grad_sq_norm": true_sq,
            "trace_cov": trace,
            "b_simple": trace / true_sq if true_sq > 0 else None,
            "norm_test": math.sqrt(centred.var(0).sum().item() / (batch * gsq)),
            "inner_product_test": math.sqrt(dots.var().item() / (batch * gsq**2)),
            "orthogonality_test": math.sqrt(
                orthogonal.square().sum().item() / (batch - 1) / (batch * gsq)
            ),
        },
        "alignment": {
            "cosines": F.cosine_similarity(every, mean[None], dim=1).tolist(),
            "negative_fraction": (dots < 0).double().mean().item(),
        },
        "parameters": per_param,
    }


def near(got, want, rel, floor=0.0):
    if want is None or got is None:
        return got is None and want is None
    return abs(got - want) <= rel * max(abs(want), floor)


def assert_matches(report, want, rel, gsnr_rel):
    section = report["per_sample"]
    scale = max(want["sample_grad_norms"])
    for got, exp in zip(section["sample_grad_norms"], want["sample_grad_norms"], strict=True):
        assert near(got, exp, rel, 1e-6 * scale), (got, exp)
    assert near(section["grad_norm"], want["grad_norm"], rel)
    for key, exp in want["noise"].items():
        # |G|² is a difference of two sums: its error is relative to the sums.
        floor = scale**2 * 1e-3 if key in ("grad_sq_norm", "b_simple") else 0.0
        assert near(section["noise"][key], exp, rel * 10, floor), (key, section["noise"], exp)
    for got, exp in zip(section["alignment"]["cosines"], want["alignment"]["cosines"], strict=True):
        assert near(got, exp, rel * 10, 1e-3), (got, exp)
    assert section["alignment"]["negative_fraction"] == want["alignment"]["negative_fraction"]
    model_scale = max(p["scale"] for p in want["parameters"].values())
    for entry in report["parameters"]:
        exp, got = want["parameters"][entry["name"]], entry["per_sample"]
        for key, value in exp["norms"].items():
            assert near(got["norms"][key], value, rel, 1e-6 * scale), (entry["name"], key)
        if exp["scale"] < 1e-6 * model_scale:
            continue  # zero by construction: its GSNR is the ratio of two rounding noises
        assert got["gsnr_elements"] == exp["gsnr_elements"], entry["name"]
        for key in ("gsnr_mean", "gsnr_median", "gsnr_above_one"):
            # In float32 the mean is the mean of a heavy tail: elements whose σ² is far below
            # ḡ², where σ² = mean g² − ḡ² keeps few digits.
            tolerance = gsnr_rel * (5 if key == "gsnr_mean" else 1)
            assert near(got[key], exp[key], tolerance, 1e-6), (entry["name"], key, got, exp)


def diagnose(client, body, path):
    from service.diagnostics.per_sample.identities import RULES

    with patch.dict(RULES, clear=path == "vmap"):
        response = client.post("/v1/diagnostics", json={**body, "per_sample": True})
    assert response.status_code == 200, response.text
    report = response.json()
    vmapped = report["per_sample"]["vmap_parameters"]
    names = [p["name"] for p in report["parameters"]]
    assert vmapped == (names if path == "vmap" else []), vmapped
    return report


def normal(shape, seed, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def ids(shape, high, seed):
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


def check(client, path, spec, factory, inputs, target, loss, *, mode="train", func=True,
          dtype="float64", seed=5, reference=None):  # fmt: skip
    """`reference`: the key in LOSSES of the plain model's loss, if not `loss`."""
    torch_dtype = getattr(torch, dtype)
    body = {
        "model": spec,
        "input": inputs.tolist(),
        "loss": loss,
        "seed": seed,
        "mode": mode,
        "dtype": dtype,
    }
    if target is not None:
        body["target"] = target.tolist()
    torch.manual_seed(seed)
    model = masked(factory()).to(torch_dtype)
    model.train(mode == "train")
    grads, batch_loss = loop_grads(model, inputs, target, reference or loss)
    report = diagnose(client, body, path)
    assert near(report["loss"], batch_loss, 1e-10 if dtype == "float64" else 1e-5)
    eps = torch.finfo(torch.float64 if dtype == "float64" else torch.float32).eps
    rel, gsnr_rel = (1e-8, 1e-7) if dtype == "float64" else (1e-4, 2e-3)
    assert_matches(report, expected(grads, eps), rel, gsnr_rel)
    if func:  # torch.func agrees with the loop, so with the service
        funcs = func_grads(model, inputs, target, reference or loss)
        for name, g in grads.items():
            atol = rel * g.abs().max().item()
            assert torch.allclose(funcs[name], g, rtol=rel, atol=atol), name
    return report


def seq(*layers):
    return {"kind": "sequential", "layers": list(layers)}


@pytest.fixture(params=PATHS)
def path(request):
    return request.param


def test_mlp_kind_with_shortcuts(client, path):
    # Width 16 at batch 4: the Gram form of g_i·ḡ (4·32 < 256); width 3: the direct form.
    sizes = [3, 16, 16, 3, 1]
    spec = {"kind": "mlp", "layer_sizes": sizes, "shortcut": True}
    from tests.reference import ExampleDeepNeuralNetwork

    check(client, path, spec, lambda: ExampleDeepNeuralNetwork(sizes, True, GELU),
          normal((4, 3), 1), normal((4, 1), 2), "mse")  # fmt: skip


def test_linear_layer_norm_and_sum_loss(client, path):
    spec = seq({"type": "linear", "out_features": 6}, {"type": "layer_norm"},
               {"type": "tanh"}, {"type": "linear", "out_features": 2, "bias": False})  # fmt: skip
    factory = lambda: Net(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 2, bias=False))  # noqa: E731
    check(client, path, spec, factory, normal((5, 4), 3), None, "sum")


def test_conv1d_batch_norm_in_eval_mode(client, path):
    spec = seq({"type": "conv1d", "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1},
               {"type": "batch_norm"}, {"type": "relu"}, {"type": "flatten"},
               {"type": "linear", "out_features": 3})  # fmt: skip
    factory = lambda: Net(nn.Conv1d(2, 4, 3, 2, 1), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(),  # noqa: E731
                          nn.Linear(4 * 5, 3))  # fmt: skip
    check(client, path, spec, factory, normal((4, 2, 9), 4), torch.tensor([0, 2, 1, 2]),
          "cross_entropy", mode="eval")  # fmt: skip


def test_conv2d_pooling(client, path):
    spec = seq({"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1},
               {"type": "max_pool2d", "kernel_size": 2}, {"type": "silu"},
               {"type": "conv2d", "out_channels": 4, "kernel_size": 2, "stride": 2},
               {"type": "avg_pool2d", "kernel_size": 2}, {"type": "flatten"},
               {"type": "linear", "out_features": 2})  # fmt: skip

    def factory():
        first = (nn.Conv2d(1, 3, 3, padding=1), nn.MaxPool2d(2), nn.SiLU())
        return Net(*first, nn.Conv2d(3, 4, 2, 2), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 2))

    check(client, path, spec, factory, normal((3, 1, 8, 8), 5), normal((3, 2), 6), "mse")


def test_embedding_attention_rms_norm(client, path):
    spec = seq({"type": "embedding", "num_embeddings": 7, "embedding_dim": 6},
               {"type": "attention", "heads": 2, "qkv_bias": True}, {"type": "rms_norm"},
               {"type": "linear", "out_features": 7},
               {"type": "transpose", "dim0": 1, "dim1": 2})  # fmt: skip
    factory = lambda: Net(nn.Embedding(7, 6), MultiHeadAttention(6, 6, 5, 0.0, 2, qkv_bias=True),  # noqa: E731
                          nn.RMSNorm(6), nn.Linear(6, 7), Transpose())  # fmt: skip
    tokens = torch.tensor([[1, 4, 2, 4, 0], [3, 3, 0, 6, 5], [1, 1, 1, 2, 2]])
    check(client, path, spec, factory, tokens, ids((3, 5), 7, 8), "cross_entropy")


def test_transformer_block_with_dropout_masks(client, path):
    cfg = {"emb_dim": 8, "context_length": 4, "n_heads": 2, "drop_rate": 0.3, "qkv_bias": False}
    spec = seq({"type": "transformer_block", "heads": 2, "dropout": 0.3},
               {"type": "linear", "out_features": 3})  # fmt: skip
    factory = lambda: Net(TransformerBlock(cfg), nn.Linear(8, 3))  # noqa: E731
    report = check(client, path, spec, factory, normal((3, 4, 8), 9), normal((3, 4, 3), 10),
                   "mse", func=False)  # fmt: skip
    assert report["per_sample"]["batch_size"] == 3


def test_residual_projection_and_dropout(client, path):
    spec = seq({"type": "residual", "projection": True,
                "body": [{"type": "linear", "out_features": 5}, {"type": "gelu"}]},
               {"type": "dropout", "p": 0.4}, {"type": "linear", "out_features": 2})  # fmt: skip
    factory = lambda: Net(Residual([nn.Linear(3, 5), nn.GELU()], nn.Linear(3, 5)),  # noqa: E731
                          nn.Dropout(0.4), nn.Linear(5, 2))  # fmt: skip
    check(client, path, spec, factory, normal((6, 3), 11), (normal((6, 2), 12) > 0).double(),
          "bce_with_logits", func=False)  # fmt: skip


def test_residual_conv_with_1x1_projection(client, path):
    spec = seq({"type": "residual", "projection": True,
                "body": [{"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1}]},
               {"type": "flatten"}, {"type": "linear", "out_features": 1})  # fmt: skip
    factory = lambda: Net(Residual([nn.Conv2d(2, 3, 3, padding=1)], nn.Conv2d(2, 3, 1)),  # noqa: E731
                          nn.Flatten(), nn.Linear(3 * 4 * 4, 1))  # fmt: skip
    check(client, path, spec, factory, normal((3, 2, 4, 4), 13), normal((3, 1), 14), "mse")


@pytest.mark.parametrize("case", ["micro", "micro_dropout_post_norm", "tiny_float32"])
def test_course_gpt(client, path, case):
    from service.schemas.models import GPT_PRESETS

    preset = "gpt-tiny" if case == "tiny_float32" else "gpt-micro"
    overrides = {"drop_rate": 0.2, "qkv_bias": True} if "dropout" in case else {}
    norm = "post" if "post" in case else "pre"
    cfg = GPT_PRESETS[preset] | overrides
    spec = {"kind": "gpt", "preset": preset, "norm": norm, **overrides}
    tokens = ids((3, 6), cfg["vocab_size"], 15)
    dtype = "float32" if case == "tiny_float32" else "float64"
    report = check(client, path, spec, lambda: GPTModel(cfg, norm), tokens,
                   ids((3, 6), cfg["vocab_size"], 16), "cross_entropy", dtype=dtype,
                   func="dropout" not in case, seed=123,
                   reference="cross_entropy_tokens")  # fmt: skip
    assert set(report["timing_ms"]) >= {"per_sample", "backward"}


def test_course_layer_norm_identity():
    """The course's LayerNorm (scale/shift) against torch.func on the course's code."""
    from service.architectures.modules import LayerNorm as ServiceLayerNorm
    from service.diagnostics.per_sample.identities import RULES

    ours, course = ServiceLayerNorm(5).double(), LayerNorm(5).double()
    with torch.no_grad():
        for p, q in zip(ours.parameters(), course.parameters(), strict=True):
            p.copy_(normal(p.shape, 17))
            q.copy_(p)
    x, delta = normal((4, 3, 5), 18), normal((4, 3, 5), 19)
    ours(x).backward(delta / 4)  # δ of L = (1/B) Σ ℓ_i, ℓ_i = δ_i · output_i

    def sample_loss(params, xi, di):
        return (functional_call(course, params, (xi[None],)) * di[None]).sum()

    params = {name: p.detach() for name, p in course.named_parameters()}
    want = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, delta)
    parts = RULES[type(ours)](ours, x, delta, 4)
    for name, g in want.items():
        assert torch.allclose(parts[name].sq_norms, g.reshape(4, -1).square().sum(1), rtol=1e-10)
        assert torch.allclose(parts[name].sum_sq, g.square().sum(0), rtol=1e-10)
        assert torch.allclose(parts[name].dots, g.reshape(4, -1) @ g.mean(0), rtol=1e-10)


# Refusals and the budget ------------------------------------------------------------------
BN = {"type": "batch_norm"}


@pytest.mark.parametrize(
    ("spec", "shape", "mode", "loc", "words"),
    [
        (seq({"type": "linear", "out_features": 2}), [1, 3], "train", ["body", "input"],
         ["at least 2 samples", "is 1"]),
        (seq({"type": "linear", "out_features": 3}, BN), [4, 3], "train",
         ["body", "model", "layers", 1], ["batch norm", '"mode": "eval"']),
        (seq({"type": "residual", "body": [{"type": "linear", "out_features": 3}, BN]}), [4, 3],
         "train", ["body", "model", "layers", 0, "body", 1], ["training mode"]),
    ],
)  # fmt: skip
def test_undefined_per_sample_gradients_are_refused_when_planned(
    client, spec, shape, mode, loc, words
):
    body = {"model": spec, "input": {"shape": shape, "distribution": "normal"}, "loss": "sum",
            "mode": mode, "per_sample": True}  # fmt: skip
    response = client.post("/v1/diagnostics", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == "per_sample_undefined"
    assert problem["errors"][0]["loc"] == loc
    assert all(word in problem["detail"] for word in words), problem["detail"]
    # Without per_sample the same request runs.
    assert client.post("/v1/diagnostics", json={**body, "per_sample": False}).status_code == 200


def test_batch_norm_in_eval_mode_is_accepted(client):
    body = {"model": seq({"type": "linear", "out_features": 3}, BN),
            "input": {"shape": [4, 3], "distribution": "normal"}, "loss": "sum", "mode": "eval",
            "per_sample": True}  # fmt: skip
    response = client.post("/v1/diagnostics", json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["per_sample"]["sample_grad_norms"]) == 4


def test_the_budget_counts_the_per_sample_pass(make_client):
    from service.architectures.registry import MODEL_KINDS
    from service.schemas.requests import DiagnosticsRequest

    body = {"model": {"kind": "mlp", "layer_sizes": [64, 64, 1]},
            "input": {"shape": [8, 64], "distribution": "normal"}, "loss": "sum"}  # fmt: skip
    request = DiagnosticsRequest.model_validate(body)
    flops = MODEL_KINDS["mlp"].signature(request.model, (8, 64), ("body",)).estimate.flops
    client = make_client(limits={"max_flops": flops + 1})
    assert client.post("/v1/diagnostics", json=body).status_code == 200
    response = client.post("/v1/diagnostics", json={**body, "per_sample": True})
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "budget_exceeded" and "flops" in problem["exceeded"]


def test_without_per_sample_the_report_has_no_per_sample_keys(client):
    body = {"model": {"kind": "mlp", "layer_sizes": [2, 2]}, "input": [[1.0, 2.0], [0.0, 1.0]],
            "loss": "sum"}  # fmt: skip
    report = client.post("/v1/diagnostics", json=body).json()
    assert "per_sample" not in report and "per_sample" not in report["timing_ms"]
    assert all("per_sample" not in p for p in report["parameters"])


def test_compare_variants_carry_per_sample(client):
    body = {"base": {"model": {"kind": "mlp", "layer_sizes": [3, 4, 1]},
                     "input": {"shape": [4, 3], "distribution": "normal"},
                     "target": {"shape": [4, 1], "distribution": "normal", "seed": 1},
                     "per_sample": True},
            "variants": {"plain": {}, "one": {"input": {"shape": [1, 3]},
                                             "target": {"shape": [1, 1]}}}}  # fmt: skip
    response = client.post("/v1/diagnostics/compare", json=body)
    assert response.status_code == 422
    assert response.json()["code"] == "per_sample_undefined"
    del body["variants"]["one"]
    report = client.post("/v1/diagnostics/compare", json=body).json()
    assert len(report["runs"]["plain"]["per_sample"]["sample_grad_norms"]) == 4


def test_findings_name_noisy_layers_and_the_noise_scale(client):
    # Targets of pure noise: every layer's signal is below its noise.
    body = {"model": {"kind": "mlp", "layer_sizes": [4, 8, 8, 8, 1], "activation": "tanh"},
            "input": {"shape": [64, 4], "distribution": "normal", "seed": 1},
            "target": {"shape": [64, 1], "distribution": "normal", "seed": 2},
            "per_sample": True}  # fmt: skip
    report = client.post("/v1/diagnostics", json=body).json()
    findings = report["diagnosis"]["findings"]
    assert any(f.startswith("signal below noise in layers 0–") for f in findings), findings
    assert any("B_simple" in f for f in findings), findings


# BackPACK ---------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::UserWarning")  # BackPACK's notes on modules it skips
def test_mlp_and_cnn_against_backpack(client):
    backpack = pytest.importorskip("backpack")
    from backpack.extensions import BatchL2Grad, SumGradSquared, Variance

    cases = [
        (seq({"type": "linear", "out_features": 6}, {"type": "relu"},
             {"type": "linear", "out_features": 3}),
         lambda: Net(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)), normal((6, 5), 19)),
        (seq({"type": "conv2d", "out_channels": 3, "kernel_size": 3, "stride": 2},
             {"type": "relu"}, {"type": "max_pool2d", "kernel_size": 2}, {"type": "flatten"},
             {"type": "linear", "out_features": 3}),
         lambda: Net(nn.Conv2d(2, 3, 3, 2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                     nn.Linear(3, 3)), normal((5, 2, 7, 7), 20)),
    ]  # fmt: skip
    for spec, factory, inputs in cases:
        batch = len(inputs)
        target = ids((batch,), 3, 21)
        torch.manual_seed(7)
        model = backpack.extend(factory().double())
        loss = backpack.extend(nn.CrossEntropyLoss())(model(inputs), target)
        with backpack.backpack(BatchL2Grad(), Variance(), SumGradSquared()):
            loss.backward()
        body = {"model": spec, "input": inputs.tolist(), "target": target.tolist(), "seed": 7,
                "loss": "cross_entropy", "dtype": "float64", "per_sample": True}  # fmt: skip
        report = client.post("/v1/diagnostics", json=body).json()
        # BackPACK's individual gradients are g_i / B (they sum to the batch gradient).
        sq = sum(p.batch_l2 for p in model.parameters()) * batch**2
        got = torch.tensor(report["per_sample"]["sample_grad_norms"], dtype=torch.float64)
        assert torch.allclose(got, sq.sqrt(), rtol=1e-9)
        for entry, param in zip(report["parameters"], model.parameters(), strict=True):
            # Variance is σ² / B², SumGradSquared Σ_i g_i² / B² (mean reduction).
            variance, mean_sq = param.variance * batch**2, param.sum_grad_squared * batch
            defined = variance > 64 * torch.finfo(torch.float64).eps * mean_sq
            ratio = param.grad[defined].square() / variance[defined]
            got = entry["per_sample"]
            assert got["gsnr_elements"] == int(defined.sum())
            assert near(got["gsnr_mean"], ratio.mean().item(), 1e-8)
            assert near(got["gsnr_above_one"], (ratio > 1).double().mean().item(), 1e-12)
            norms = (param.batch_l2 * batch**2).sqrt()
            assert near(got["norms"]["max"], norms.max().item(), 1e-9)
            assert near(got["norms"]["min"], norms.min().item(), 1e-9)


# Memory ----------------------------------------------------------------------------------
PER_SAMPLE_MEMORY_CASES = {
    "mlp": {"model": {"kind": "mlp", "layer_sizes": [2048] * 4, "activation": "relu"},
            "input": {"shape": [64, 2048], "distribution": "normal"}, "loss": "sum"},
    "gpt_logits": {"model": {"kind": "gpt", "preset": "gpt2-small", "n_layers": 2,
                             "emb_dim": 128, "n_heads": 4},
                   "input": {"shape": [4, 256], "distribution": "randint", "high": 50257},
                   "target": {"shape": [4, 256], "distribution": "randint", "high": 50257},
                   "loss": "cross_entropy"},
    "conv_im2col": {"model": seq({"type": "conv2d", "out_channels": 16, "kernel_size": 7,
                                  "padding": 3}, {"type": "relu"}, {"type": "flatten"},
                                 {"type": "linear", "out_features": 1}),
                    "input": {"shape": [16, 8, 64, 64], "distribution": "normal"},
                    "loss": "sum", "dtype": "float64"},
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("body", PER_SAMPLE_MEMORY_CASES.values(), ids=PER_SAMPLE_MEMORY_CASES)
def test_the_memory_estimate_bounds_the_per_sample_peak(body):
    from tests.test_estimates import _measured_peak

    measured = _measured_peak({**body, "per_sample": True})
    assert measured["status"] == 200
    assert measured["estimate"] / 5 <= measured["grown"] <= measured["estimate"], measured


def test_the_accelerator_gsnr_path_agrees_with_the_cpu_path():
    """The torch path that accelerators take, run on the CPU against the numpy path."""
    from service.diagnostics.per_sample.parts import Parts
    from service.diagnostics.per_sample.statistics import _gsnr_on_device, gsnr

    per_sample = normal((6, 40), 22)
    per_sample[:, :5] = 0  # no variance: left out
    per_sample[:, 5] = 1.5  # none either, but a signal
    mean = per_sample.mean(0)
    parts = Parts(torch.zeros(6), torch.zeros(6), per_sample.square().sum(0))
    cpu, device = gsnr(parts, mean, 6), _gsnr_on_device(parts.sum_sq, mean, 6)
    assert cpu.count == device.count == 34
    for key in ("mean", "median", "above_one", "grad_sq"):
        assert math.isclose(getattr(cpu, key), getattr(device, key), rel_tol=1e-12), key
    variance = per_sample[:, 6:].var(0, unbiased=False)
    ratio = mean[6:].square() / variance
    assert math.isclose(cpu.median, torch.quantile(ratio, 0.5).item(), rel_tol=1e-12)
    assert math.isclose(cpu.mean, ratio.mean().item(), rel_tol=1e-12)
