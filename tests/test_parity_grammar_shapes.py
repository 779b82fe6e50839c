"""The shape layers, the positional embedding, padding_idx, nn.MultiheadAttention's layout,
activation options and the residual's merge and projection against plain PyTorch built the
same way: names, loss and per-parameter gradient statistics within 2e-4 relative."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from service.architectures.init import build_seeded
from service.architectures.registry import MODEL_KINDS
from service.schemas.models import GPT_PRESETS, SequentialSpec
from tests.conftest import close
from tests.reference_gpt import GPTModel
from tests.test_errors import assert_problem
from tests.test_parity_architectures import (
    GRAD_STATS,
    REL,
    Net,
    Residual,
    assert_parity,
    build,
    diagnose,
    normal,
)


class Lambda(nn.Module):
    """A parameterless step written as a plain tensor expression."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class Concat(nn.Module):
    """DenseNet's merge: torch.cat([body(x), x], dim=1)."""

    def __init__(self, body):
        super().__init__()
        self.body = nn.Sequential(*body)

    def forward(self, x):
        return torch.cat([self.body(x), x], dim=1)


class SelfAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention on (N, T, D) as self-attention, PyTorch's float causal mask."""

    def __init__(self, dim, heads, bias, causal):
        super().__init__(dim, heads, bias=bias, batch_first=True)
        self.causal = causal

    def forward(self, x):
        t = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t) if self.causal else None
        return super().forward(x, x, x, attn_mask=mask, need_weights=False)[0]


def sequential(layers, inputs, seed, **extra):
    return {"model": {"kind": "sequential", "layers": layers}, "input": inputs.tolist(),
            "loss": "sum", "seed": seed, **extra}  # fmt: skip


def squared(layers, inputs, seed, out_shape, **extra):
    """The request whose loss is F.mse_loss(output, zeros): `mse_to_zero` below."""
    zeros = {"shape": list(out_shape), "distribution": "zeros"}
    return sequential(layers, inputs, seed, loss="mse", target=zeros, **extra)


def mse_to_zero(output):
    return F.mse_loss(output, torch.zeros_like(output))


def test_shape_layers(client):
    layers = [
        {"type": "transpose", "dim0": 1, "dim1": -1},
        {"type": "linear", "out_features": 8},
        {"type": "permute", "dims": [0, 2, 1]},
        {"type": "reshape", "shape": [2, -1]},  # a copy: the permuted input is not contiguous
        {"type": "layer_norm"},
        {"type": "unflatten", "dim": -1, "sizes": [4, 6]},
        {"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1},
        {"type": "flatten"},
        {"type": "linear", "out_features": 5},
    ]
    inputs = normal((3, 4, 6), 1)
    model = build(7, lambda: Net(
        Lambda(lambda x: x.transpose(1, 2)), nn.Linear(4, 8), Lambda(lambda x: x.permute(0, 2, 1)),
        Lambda(lambda x: x.reshape(len(x), 2, -1)), nn.LayerNorm(24), nn.Unflatten(-1, (4, 6)),
        nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(72, 5),
    ))  # fmt: skip
    loss = model(inputs).sum()
    loss.backward()
    report = diagnose(client, sequential(layers, inputs, 7))
    assert_parity(report, model, loss)
    assert [layer["output_shape"] for layer in report["layers"]][:6] == [
        [3, 6, 4], [3, 6, 8], [3, 8, 6], [3, 2, 24], [3, 2, 24], [3, 2, 4, 6],
    ]  # fmt: skip


def assert_parity_in_order(report, model, loss):
    """assert_parity for a model whose parameter names differ: paired in order, by shape."""
    assert close(report["loss"], loss.item(), rel=REL)
    named = list(model.named_parameters())
    floor = 1e-3 * max(p.grad.abs().max().item() for _, p in named)
    for entry, (name, param) in zip(report["parameters"], named, strict=True):
        assert entry["shape"] == list(param.shape), (entry["name"], name)
        for key, stat in GRAD_STATS.items():
            expected = stat(param.grad.double()).item()
            assert abs(entry["grad"][key] - expected) <= REL * max(abs(expected), floor), (
                name, key, entry["grad"][key], expected,
            )  # fmt: skip
        assert close(entry["value"]["l2_norm"], param.double().norm().item(), rel=REL)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_positional_embedding_makes_the_course_gpt(client, mode):
    """embedding, positional_embedding, dropout, blocks, norm, head: the course's GPTModel,
    weights, dropout masks and gradients (its LayerNorm's scale and shift are nn.LayerNorm's
    weight and bias here)."""
    cfg = GPT_PRESETS["gpt-tiny"] | {"n_layers": 2, "drop_rate": 0.2}
    d, vocab = cfg["emb_dim"], cfg["vocab_size"]
    block = {"type": "transformer_block", "heads": cfg["n_heads"], "dropout": 0.2}
    layers = [
        {"type": "embedding", "num_embeddings": vocab, "embedding_dim": d},
        {"type": "positional_embedding", "max_length": cfg["context_length"]},
        {"type": "dropout", "p": 0.2}, block, block,
        {"type": "layer_norm"}, {"type": "linear", "out_features": vocab, "bias": False},
        {"type": "transpose", "dim0": 1, "dim1": 2},  # classes in dimension 1, as F.cross_entropy
    ]  # fmt: skip
    ids = torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(9)
    model = GPTModel(cfg).train(mode == "train")
    loss = F.cross_entropy(model(ids).flatten(0, 1), target.flatten())
    loss.backward()
    body = sequential(layers, ids, 9, target=target.tolist(), loss="cross_entropy", mode=mode)
    report = diagnose(client, body)
    assert_parity_in_order(report, model, loss)
    assert report["parameters"][1]["name"] == "layers.1.weight"

    spec = SequentialSpec.model_validate(body["model"])
    ours, _ = build_seeded(lambda: MODEL_KINDS["sequential"].build(spec, (2, 12)), 9)
    torch.manual_seed(9)
    assert torch.equal(ours.layers[1].weight, GPTModel(cfg).pos_emb.weight)


@pytest.mark.parametrize("padding_idx", [0, 3, -1])
def test_embedding_padding_idx(client, padding_idx):
    ids = torch.tensor([[1, 3, 9, 0], [9, 9, 3, 2]])  # every padding row is used
    layers = [
        {"type": "embedding", "num_embeddings": 10, "embedding_dim": 6, "padding_idx": padding_idx},
        {"type": "linear", "out_features": 4},
    ]
    model = build(4, lambda: Net(nn.Embedding(10, 6, padding_idx=padding_idx), nn.Linear(6, 4)))
    loss = mse_to_zero(model(ids))
    loss.backward()
    weight = model.layers[0].weight
    assert not weight[padding_idx].any() and not weight.grad[padding_idx].any()
    assert_parity(diagnose(client, squared(layers, ids, 4, (2, 4, 4))), model, loss)
    # Without padding_idx the row would get a gradient: the statistics tell the two apart.
    free = nn.Embedding.from_pretrained(weight.detach().clone(), freeze=False)
    mse_to_zero(model.layers[1](free(ids))).backward()
    assert free.weight.grad[padding_idx].abs().sum() > 0


@pytest.mark.parametrize(("bias", "causal"), [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_attention_in_torch_layout(client, bias, causal, mode):
    layers = [
        {"type": "linear", "out_features": 12},
        {"type": "attention", "heads": 3, "layout": "torch", "bias": bias, "causal": causal},
        {"type": "linear", "out_features": 4},
    ]
    inputs = normal((2, 5, 6), 3)
    model = build(12, lambda: Net(
        nn.Linear(6, 12), SelfAttention(12, 3, bias, causal), nn.Linear(12, 4),
    )).train(mode == "train")  # fmt: skip
    loss = mse_to_zero(model(inputs))
    loss.backward()
    report = diagnose(client, squared(layers, inputs, 12, (2, 5, 4), mode=mode))
    assert_parity(report, model, loss)
    names = [p["name"] for p in report["parameters"] if p["name"].startswith("layers.1.")]
    expected = ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    assert names == [f"layers.1.{n}" for n in expected if bias or "bias" not in n]


def test_activation_options(client):
    layers = [
        {"type": "linear", "out_features": 8}, {"type": "leaky_relu", "negative_slope": 0.2},
        {"type": "linear", "out_features": 8}, {"type": "elu", "alpha": 0.5},
        {"type": "linear", "out_features": 8}, {"type": "softplus", "beta": 2, "threshold": 1.0},
        {"type": "linear", "out_features": 8}, {"type": "leaky_relu"}, {"type": "softplus"},
        {"type": "linear", "out_features": 2},
    ]  # fmt: skip
    inputs = normal((6, 3), 5) * 3  # both sides of each kink and of softplus's threshold
    model = build(3, lambda: Net(
        nn.Linear(3, 8), nn.LeakyReLU(0.2), nn.Linear(8, 8), nn.ELU(alpha=0.5),
        nn.Linear(8, 8), nn.Softplus(beta=2, threshold=1.0), nn.Linear(8, 8), nn.LeakyReLU(),
        nn.Softplus(), nn.Linear(8, 2),
    ))  # fmt: skip
    loss = F.mse_loss(model(inputs), torch.zeros(6, 2))
    loss.backward()
    body = sequential(
        layers, inputs, 3, loss="mse", target={"shape": [6, 2], "distribution": "zeros"}
    )
    assert_parity(diagnose(client, body), model, loss)


@pytest.mark.parametrize(
    ("shape", "body", "plain"),
    [
        ((5, 3), [{"type": "linear", "out_features": 4}, {"type": "tanh"}],
         lambda: [nn.Linear(3, 4), nn.Tanh()]),
        ((2, 2, 5, 5), [{"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1},
                        {"type": "relu"}],
         lambda: [nn.Conv2d(2, 3, 3, padding=1), nn.ReLU()]),
    ],
    ids=["features", "channels"],
)  # fmt: skip
def test_residual_concat(client, shape, body, plain):
    layers = [{"type": "residual", "merge": "concat", "body": body}, {"type": "flatten"},
              {"type": "linear", "out_features": 2}]  # fmt: skip
    inputs = normal(shape, 2)
    width = (shape[1] + body[0].get("out_features", 3)) * (25 if len(shape) == 4 else 1)
    model = build(6, lambda: Net(Concat(plain()), nn.Flatten(), nn.Linear(width, 2)))
    loss = mse_to_zero(model(inputs))
    loss.backward()
    report = diagnose(client, squared(layers, inputs, 6, (shape[0], 2)))
    assert_parity(report, model, loss)
    assert report["layers"][0]["output_shape"] == [
        shape[0],
        width // (25 if len(shape) == 4 else 1),
        *shape[2:],
    ]


PROJECTIONS = {
    # name: (projection, input shape, body, plain body, plain projection)
    "true_rank3_is_a_1x1_conv": (
        True, (2, 3, 7), [{"type": "conv1d", "out_channels": 5, "kernel_size": 3, "padding": 1}],
        lambda: [nn.Conv1d(3, 5, 3, padding=1)], lambda: nn.Conv1d(3, 5, 1),
    ),
    "conv_rank4": (
        "conv", (2, 2, 4, 4), [{"type": "conv2d", "out_channels": 4, "kernel_size": 1}],
        lambda: [nn.Conv2d(2, 4, 1)], lambda: nn.Conv2d(2, 4, 1),
    ),
    "linear_rank3_last_dim": (
        "linear", (2, 5, 6), [{"type": "linear", "out_features": 4}, {"type": "gelu"}],
        lambda: [nn.Linear(6, 4), nn.GELU()], lambda: nn.Linear(6, 4),
    ),
    "linear_rank3_length": (  # a Linear over the length, asked for by name
        "linear", (2, 3, 8), [{"type": "conv1d", "out_channels": 3, "kernel_size": 3}],
        lambda: [nn.Conv1d(3, 3, 3)], lambda: nn.Linear(8, 6),
    ),
    "true_rank2_is_a_linear": (
        True, (4, 3), [{"type": "linear", "out_features": 2}],
        lambda: [nn.Linear(3, 2)], lambda: nn.Linear(3, 2),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", PROJECTIONS)
def test_residual_projection(client, name):
    projection, shape, body, plain_body, plain_projection = PROJECTIONS[name]
    layers = [{"type": "residual", "projection": projection, "body": body}]
    inputs = normal(shape, 8)
    model = build(10, lambda: Net(Residual(plain_body(), projection=plain_projection())))
    output = model(inputs)
    loss = mse_to_zero(output)
    loss.backward()
    assert_parity(diagnose(client, squared(layers, inputs, 10, output.shape)), model, loss)


def shaped(layers, shape):
    return {"model": {"kind": "sequential", "layers": layers},
            "input": {"shape": shape, "distribution": "normal"}, "loss": "sum"}  # fmt: skip


LAYERS = ["body", "model", "layers"]
SHAPE_ERRORS = {
    # name: (layers, input shape, loc after body.model.layers, words in the detail)
    "reshape_size": ([{"type": "reshape", "shape": [5, 2]}], [2, 3, 4], [0],
                     ["layer 0 (reshape) on input [2, 3, 4]",
                      "[5, 2] does not fit a sample's 12 elements"]),
    "reshape_inferred": ([{"type": "linear", "out_features": 7},
                          {"type": "reshape", "shape": [2, -1]}],
                         [2, 7], [1], ["layer 1 (reshape)", "[2, 7]", "[2, -1]"]),
    "permute_moves_batch": ([{"type": "permute", "dims": [1, 0, 2]}], [2, 3, 4], [0],
                            ["permute", "[2, 3, 4]", "batch stays first"]),
    "permute_rank": ([{"type": "permute", "dims": [0, 2, 1]}], [2, 3], [0], ["2 dimensions"]),
    "permute_repeats": ([{"type": "permute", "dims": [0, 1, 1]}], [2, 3, 4], [0],
                        ["not a permutation"]),
    "permute_out_of_range": ([{"type": "permute", "dims": [0, 3, 1]}], [2, 3, 4], [0],
                             ["outside"]),
    "transpose_batch": ([{"type": "transpose", "dim0": -3, "dim1": 1}], [2, 3, 4], [0],
                        ["dim0=-3 is the batch dimension"]),
    "transpose_out_of_range": ([{"type": "transpose", "dim0": 1, "dim1": 2}], [2, 3], [0],
                               ["dim1=2 is outside its 2 dimensions"]),
    "unflatten_sizes": ([{"type": "unflatten", "dim": 1, "sizes": [4, -1]}], [2, 6, 3], [0],
                        ["unflatten", "[4, -1] does not fit dim 1's 6 elements"]),
    "unflatten_batch": ([{"type": "unflatten", "dim": 0, "sizes": [2, 1]}], [2, 6], [0],
                        ["batch"]),
    "positional_too_long": ([{"type": "positional_embedding", "max_length": 4}], [2, 5, 8], [0],
                            ["5 tokens exceed max_length=4"]),
    "positional_rank": ([{"type": "positional_embedding", "max_length": 4}], [2, 8], [0],
                        ["(N, T, D)"]),
    "concat_other_dims": ([{"type": "residual", "merge": "concat", "body": [
                              {"type": "conv2d", "out_channels": 3, "kernel_size": 3}]}],
                          [2, 2, 5, 5], [0], ["[2, 3, 3, 3]", "concat along dim 1"]),
    "true_rank3_length_change": ([{"type": "residual", "projection": True, "body": [
                                     {"type": "linear", "out_features": 4}]}],
                                 [2, 5, 6], [0], ["1x1 conv projection (true on rank 3) maps dim 1",
                                                  "set projection linear"]),
    "conv_on_rank2": ([{"type": "residual", "projection": "conv", "body": [
                          {"type": "linear", "out_features": 4}]}],
                      [2, 6], [0], ["1x1 conv projection takes (N, C, L)"]),
    "linear_on_channels": ([{"type": "residual", "projection": "linear", "body": [
                               {"type": "conv1d", "out_channels": 4, "kernel_size": 1}]}],
                           [2, 3, 5], [0], ["[2, 4, 5]", "linear projection maps the last dim"]),
}  # fmt: skip


@pytest.mark.parametrize("name", SHAPE_ERRORS)
def test_impossible_shapes_name_the_layer(client, name):
    layers, shape, loc, words = SHAPE_ERRORS[name]
    response = client.post("/v1/diagnostics", json=shaped(layers, shape))
    problem = assert_problem(response, 422, "shape_mismatch", LAYERS + loc)
    for word in words:
        assert word in problem["detail"], (word, problem["detail"])


SPEC_ERRORS = {
    # name: (layer, the field's loc within it, or None for the layer)
    "option_of_another_activation": ({"type": "relu", "negative_slope": 0.2}, "negative_slope"),
    "elu_takes_no_beta": ({"type": "elu", "beta": 2.0}, "beta"),
    "softplus_beta_zero": ({"type": "softplus", "beta": 0}, "beta"),
    "two_inferred_sizes": ({"type": "reshape", "shape": [-1, -1]}, "shape"),
    "zero_size": ({"type": "unflatten", "dim": 1, "sizes": [0, 2]}, "sizes"),
    "padding_idx_range": ({"type": "embedding", "num_embeddings": 5, "embedding_dim": 2,
                           "padding_idx": -6}, "padding_idx"),
    "torch_layout_dropout": ({"type": "attention", "heads": 2, "layout": "torch",
                              "dropout": 0.1}, None),
    "torch_layout_qkv_bias": ({"type": "attention", "heads": 2, "layout": "torch",
                               "qkv_bias": True}, None),
    "course_layout_bias": ({"type": "attention", "heads": 2, "bias": False}, None),
    "concat_with_projection": ({"type": "residual", "merge": "concat", "projection": True,
                                "body": [{"type": "relu"}]}, None),
}  # fmt: skip


@pytest.mark.parametrize("name", SPEC_ERRORS)
def test_invalid_options_are_refused_with_their_location(client, name):
    layer, field = SPEC_ERRORS[name]
    body = shaped([layer], [2, 4, 4])
    problem = assert_problem(client.post("/v1/diagnostics", json=body), 422, "invalid_request")
    locs = [e["loc"] for e in problem["errors"]]
    want = [*LAYERS, 0] + ([field] if field else [])
    assert any(loc[: len(want)] == want for loc in locs), locs


def test_activation_options_default_to_pytorch_s():
    """Each activation is one layer type; a bare one is PyTorch's module with its defaults."""
    import inspect
    from typing import get_args

    from service.architectures.activations import ACTIVATIONS
    from service.schemas.layers import ACTIVATION_OPTIONS, LAYER_SPECS

    types = [t for spec in LAYER_SPECS for t in get_args(spec.model_fields["type"].annotation)]
    assert sorted(t for t in types if t in ACTIVATIONS) == sorted(ACTIVATIONS)
    for name, spec in ACTIVATION_OPTIONS.items():
        defaults = inspect.signature(ACTIVATIONS[name].make).parameters
        options = {k: f.default for k, f in spec.model_fields.items() if k != "type"}
        assert options and all(defaults[k].default == v for k, v in options.items()), name
