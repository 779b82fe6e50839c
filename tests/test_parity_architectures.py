"""`sequential` and `gpt` against independent plain-PyTorch models built the same way:
names, loss and per-parameter gradient statistics within 2e-4 relative."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tests.conftest import close
from tests.reference_gpt import GPTModel, TransformerBlock

REL = 2e-4
GRAD_STATS = {
    "mean_abs": lambda g: g.abs().mean(),
    "l2_norm": lambda g: g.norm(),
    "max_abs": lambda g: g.abs().max(),
    "min": lambda g: g.min(),
    "max": lambda g: g.max(),
}


class Net(nn.Module):
    """A user's model: an nn.Sequential named `layers`."""

    def __init__(self, *layers):
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class Residual(nn.Module):
    def __init__(self, body, projection=None):
        super().__init__()
        self.body = nn.Sequential(*body)
        self.projection = projection

    def forward(self, x):
        return self.body(x) + (x if self.projection is None else self.projection(x))


def build(seed, factory):
    torch.manual_seed(seed)
    return factory()


def assert_parity(report, model, loss):
    assert close(report["loss"], loss.item(), rel=REL)
    named = list(model.named_parameters())
    assert [p["name"] for p in report["parameters"]] == [n for n, _ in named]
    # Gradients that are zero in exact arithmetic (a conv bias before batch norm) are
    # rounding noise: compare those against the model's largest gradient, not themselves.
    floor = 1e-3 * max(p.grad.abs().max().item() for _, p in named)
    for entry, (name, param) in zip(report["parameters"], named, strict=True):
        assert entry["shape"] == list(param.shape)
        for key, stat in GRAD_STATS.items():
            expected = stat(param.grad.double()).item()
            error = abs(entry["grad"][key] - expected)
            assert error <= REL * max(abs(expected), floor), (
                name,
                key,
                entry["grad"][key],
                expected,
            )
        assert close(entry["value"]["l2_norm"], param.double().norm().item(), rel=REL)


def diagnose(client, body):
    response = client.post("/v1/diagnostics", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def normal(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_cnn_with_batch_norm(client):
    body = {
        "model": {
            "kind": "sequential",
            "layers": [
                {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
                {"type": "batch_norm"},
                {"type": "relu"},
                {"type": "max_pool2d", "kernel_size": 2},
                {"type": "conv2d", "out_channels": 6, "kernel_size": 3, "stride": 1},
                {"type": "avg_pool2d", "kernel_size": 2},
                {"type": "flatten"},
                {"type": "linear", "out_features": 10},
            ],
        },
        "input": {"shape": [4, 1, 12, 12], "distribution": "normal", "seed": 3},
        "target": [1, 7, 0, 9],
        "loss": "cross_entropy",
        "seed": 11,
    }
    model = build(11, lambda: Net(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(6 * 2 * 2, 10),
    ))  # fmt: skip
    loss = F.cross_entropy(model(normal((4, 1, 12, 12), 3)), torch.tensor([1, 7, 0, 9]))
    loss.backward()
    report = diagnose(client, body)
    assert_parity(report, model, loss)
    assert [layer["output_shape"] for layer in report["layers"]][-3:] == [
        [4, 6, 2, 2],
        [4, 24],
        [4, 10],
    ]


def test_conv1d_rms_norm_and_dropout_in_eval_mode(client):
    body = {
        "model": {
            "kind": "sequential",
            "layers": [
                {"type": "conv1d", "out_channels": 5, "kernel_size": 3, "stride": 2},
                {"type": "batch_norm"},
                {"type": "silu"},
                {"type": "dropout", "p": 0.3},
                {"type": "flatten"},
                {"type": "rms_norm"},
                {"type": "linear", "out_features": 2, "bias": False},
            ],
        },
        "input": {"shape": [3, 2, 9], "distribution": "uniform", "low": -1, "high": 1, "seed": 4},
        "target": {"shape": [3, 2], "distribution": "normal", "seed": 5},
        "mode": "eval",
        "seed": 2,
    }
    model = build(2, lambda: Net(
        nn.Conv1d(2, 5, 3, stride=2), nn.BatchNorm1d(5), nn.SiLU(), nn.Dropout(0.3),
        nn.Flatten(), nn.RMSNorm(20), nn.Linear(20, 2, bias=False),
    )).eval()  # fmt: skip
    inputs = torch.rand((3, 2, 9), generator=torch.Generator().manual_seed(4)) * 2 - 1
    loss = F.mse_loss(model(inputs), normal((3, 2), 5))
    loss.backward()
    assert_parity(diagnose(client, body), model, loss)


@pytest.mark.parametrize("norm", ["pre", "post", "none"])
@pytest.mark.parametrize("shortcut", [True, False])
def test_transformer_stack(client, norm, shortcut):
    block = {"type": "transformer_block", "heads": 4, "norm": norm, "shortcut": shortcut}
    body = {
        "model": {
            "kind": "sequential",
            "layers": [
                {"type": "linear", "out_features": 16},
                block,
                block,
                {"type": "layer_norm"},
                {"type": "linear", "out_features": 8},
            ],
        },
        "input": {"shape": [2, 6, 8], "distribution": "normal", "seed": 1},
        "loss": "sum",
        "seed": 5,
    }
    cfg = {"emb_dim": 16, "context_length": 6, "n_heads": 4, "drop_rate": 0.0, "qkv_bias": False}
    model = build(5, lambda: Net(
        nn.Linear(8, 16),
        TransformerBlock(cfg, norm, shortcut),
        TransformerBlock(cfg, norm, shortcut),
        nn.LayerNorm(16), nn.Linear(16, 8),
    ))  # fmt: skip
    loss = model(normal((2, 6, 8), 1)).sum()
    loss.backward()
    report = diagnose(client, body)
    assert_parity(report, model, loss)
    assert report["parameters"][2]["name"] == "layers.1.att.W_query.weight"


def test_residual_mlp_with_projection(client):
    body = {
        "model": {
            "kind": "sequential",
            "layers": [
                {"type": "linear", "out_features": 8},
                {"type": "residual", "body": [
                    {"type": "linear", "out_features": 8},
                    {"type": "relu"},
                    {"type": "linear", "out_features": 8},
                ]},
                {"type": "residual", "projection": True, "body": [
                    {"type": "linear", "out_features": 4}, {"type": "tanh"},
                ]},
                {"type": "linear", "out_features": 1},
            ],
        },
        "input": {"shape": [5, 3], "distribution": "normal", "seed": 9},
        "target": {"shape": [5, 1], "distribution": "zeros"},
        "seed": 17,
    }  # fmt: skip
    model = build(17, lambda: Net(
        nn.Linear(3, 8),
        Residual([nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)]),
        Residual([nn.Linear(8, 4), nn.Tanh()], projection=nn.Linear(8, 4)),
        nn.Linear(4, 1),
    ))  # fmt: skip
    loss = F.mse_loss(model(normal((5, 3), 9)), torch.zeros(5, 1))
    loss.backward()
    report = diagnose(client, body)
    assert_parity(report, model, loss)
    assert "layers.2.projection.weight" in [p["name"] for p in report["parameters"]]


def test_residual_conv_with_1x1_projection(client):
    body = {
        "model": {
            "kind": "sequential",
            "layers": [{"type": "residual", "projection": True, "body": [
                {"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1},
                {"type": "relu"},
            ]}],
        },
        "input": {"shape": [2, 2, 5, 5], "distribution": "normal", "seed": 2},
        "loss": "sum",
        "seed": 8,
    }  # fmt: skip
    model = build(8, lambda: Net(
        Residual([nn.Conv2d(2, 3, 3, padding=1), nn.ReLU()], projection=nn.Conv2d(2, 3, 1)),
    ))  # fmt: skip
    loss = model(normal((2, 2, 5, 5), 2)).sum()
    loss.backward()
    assert_parity(diagnose(client, body), model, loss)


def test_embedding_and_attention_on_token_ids(client):
    """A sequential model follows F.cross_entropy: the classes of its (N, T, V) = (2, 4, 10)
    output lie in dimension 1 (4 of them), class ids have shape (N, V) (only `gpt` flattens
    its logits to (N*T, V))."""
    ids = [[1, 4, 2, 9], [3, 3, 0, 7]]
    body = {
        "model": {
            "kind": "sequential",
            "layers": [
                {"type": "embedding", "num_embeddings": 10, "embedding_dim": 12},
                {"type": "attention", "heads": 3, "qkv_bias": True},
                {"type": "linear", "out_features": 10},
            ],
        },
        "input": ids,
        "target": [[0, 2, 3, 1, 3, 0, 1, 2, 2, 0], [3, 1, 0, 0, 2, 3, 1, 1, 0, 2]],
        "loss": "cross_entropy",
        "seed": 21,
    }
    from tests.reference_gpt import MultiHeadAttention

    model = build(21, lambda: Net(
        nn.Embedding(10, 12),
        MultiHeadAttention(12, 12, 4, 0.0, 3, qkv_bias=True),
        nn.Linear(12, 10),
    ))  # fmt: skip
    logits = model(torch.tensor(ids))
    loss = F.cross_entropy(logits, torch.tensor(body["target"]))
    loss.backward()
    assert_parity(diagnose(client, body), model, loss)


GPT_CASES = {
    # name: (config overrides, norm, shortcut, mode)
    "micro": ({}, "pre", True, "train"),
    "tiny_no_shortcut": ({"preset": "gpt-tiny"}, "pre", False, "train"),
    "tiny_qkv_bias": ({"preset": "gpt-tiny", "qkv_bias": True}, "pre", True, "train"),
    "post_norm": ({"n_layers": 2}, "post", True, "train"),
    "no_norm": ({"n_layers": 2}, "none", True, "train"),
    "dropout_eval": ({"preset": "gpt-tiny", "drop_rate": 0.2}, "pre", True, "eval"),
    "dropout_eval_no_shortcut": ({"preset": "gpt-tiny", "drop_rate": 0.2}, "pre", False, "eval"),
    "dropout_train": ({"preset": "gpt-tiny", "drop_rate": 0.2}, "pre", True, "train"),
}


@pytest.mark.parametrize("name", GPT_CASES)
def test_gpt_matches_the_course_code(client, name):
    from service.schemas.models import GPT_PRESETS

    overrides, norm, shortcut, mode = GPT_CASES[name]
    spec = {"kind": "gpt", "preset": "gpt-micro", **overrides, "norm": norm, "shortcut": shortcut}
    cfg = GPT_PRESETS[spec["preset"]] | {k: v for k, v in overrides.items() if k != "preset"}
    tokens = min(cfg["context_length"], 12)
    ids = torch.randint(
        0, cfg["vocab_size"], (2, tokens), generator=torch.Generator().manual_seed(1)
    )
    target = torch.randint(
        0, cfg["vocab_size"], (2, tokens), generator=torch.Generator().manual_seed(2)
    )
    body = {
        "model": spec,
        "input": ids.tolist(),
        "target": target.tolist(),
        "loss": "cross_entropy",
        "seed": 123,
        "mode": mode,
    }
    torch.manual_seed(123)
    model = GPTModel(cfg, norm, shortcut)
    model.train(mode == "train")
    logits = model(ids)  # dropout masks continue the global stream after construction
    loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
    loss.backward()
    report = diagnose(client, body)
    assert_parity(report, model, loss)
    assert [layer["name"] for layer in report["layers"]] == [
        f"trf_blocks.{i}" for i in range(cfg["n_layers"])
    ]
    assert report["output_shape"] == [2, tokens, cfg["vocab_size"]]


def test_gpt_initial_weights_are_the_course_weights():
    from service.architectures.init import build_seeded
    from service.architectures.modules import GPTModel as ServiceGPT
    from service.schemas.models import GPT_PRESETS

    cfg = GPT_PRESETS["gpt-tiny"]
    torch.manual_seed(7)
    course = GPTModel(cfg)
    ours, _ = build_seeded(lambda: ServiceGPT(**cfg), 7)
    course_state = dict(course.named_parameters())
    for name, param in ours.named_parameters():
        assert torch.equal(param, course_state[name]), name


def test_gelu_activations_differ_in_the_fourth_digit(client):
    # The lesson: gelu_tanh and gelu are different activations.
    base = {
        "model": {"kind": "mlp", "layer_sizes": [3, 3, 3, 3, 3, 1], "shortcut": True},
        "input": [[1.0, 0.0, -1.0]], "target": [[0.0]], "seed": 123,
    }  # fmt: skip
    tanh = diagnose(client, base)
    erf = diagnose(client, {**base, "model": {**base["model"], "activation": "gelu"}})
    a, b = tanh["parameters"][0]["grad"]["mean_abs"], erf["parameters"][0]["grad"]["mean_abs"]
    assert 1e-4 < abs(a - b) / a < 1e-3  # measured: 7.7e-4


def test_the_served_hash_is_the_hash_of_the_course_weights(make_client):
    # The service hashes each parameter on a side thread as soon as it is drawn: the hash
    # must be that of the weights plain PyTorch draws after torch.manual_seed.
    from service.diagnostics.model_cache import hash_parameters
    from service.schemas.models import GPT_PRESETS

    torch.manual_seed(7)
    course = GPTModel(GPT_PRESETS["gpt-tiny"])
    body = {
        "model": {"kind": "gpt", "preset": "gpt-tiny"},
        "input": [[1, 2, 3]],
        "target": [[2, 3, 4]],
        "loss": "cross_entropy",
        "seed": 7,
    }
    report = diagnose(make_client(), body)
    assert report["provenance"]["init_sha256"] == hash_parameters(course)
