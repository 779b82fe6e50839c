"""spec_from_module: the parity tests' plain-PyTorch modules -> specs, and the service's
gradients for each spec against the module's own (forward, same loss, backward), parameter by
parameter, names paired by derive_spec (for a bare nn.Sequential the service's `layers.0.weight`
is the module's `0.weight`)."""

import json
import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from service.architectures.init import build_seeded
from service.architectures.registry import MODEL_KINDS
from service.client import UnsupportedModule, spec_from_module
from service.client.spec import MODEL_SPEC, derive_spec
from service.schemas.models import GPT_PRESETS
from tests.conftest import close
from tests.reference import ExampleDeepNeuralNetwork
from tests.reference_gpt import GPTModel, MultiHeadAttention, TransformerBlock
from tests.test_parity_architectures import GRAD_STATS, REL, Net, Residual, diagnose, normal


def module_loss(output, loss, target, kind):
    if loss == "sum":
        return output.sum()
    if loss == "mse":
        return F.mse_loss(output, target)
    if kind == "gpt":  # the course's (B, T, V) logits, flattened; others: PyTorch's (N, C, ...)
        return F.cross_entropy(output.flatten(0, -2), target.flatten())
    return F.cross_entropy(output, target)


def roundtrip(client, seed, factory, inputs, loss="sum", target=None, mode="train"):
    """Build as after torch.manual_seed(seed), derive the spec, compare the gradients."""
    torch.manual_seed(seed)
    module = factory()
    module.train(mode == "train")
    rng = torch.get_rng_state()
    derived = derive_spec(module, inputs)
    # Untouched: the global stream (the module's dropout masks), modes and hooks.
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training == (mode == "train") and not m._forward_hooks for m in module.modules())
    assert json.loads(json.dumps(derived.spec)) == derived.spec
    value = module_loss(module(inputs), loss, target, derived.spec["kind"])
    value.backward()
    body = {"model": derived.spec, "input": inputs.tolist(), "loss": loss, "seed": seed}
    body |= {"mode": mode} | ({} if target is None else {"target": target.tolist()})
    report = diagnose(client, body)
    assert close(report["loss"], value.item(), rel=REL)
    named = dict(module.named_parameters())
    assert [derived.names[p["name"]] for p in report["parameters"]] == list(named)
    floor = 1e-3 * max(p.grad.abs().max().item() for p in named.values())
    for entry in report["parameters"]:
        name = derived.names[entry["name"]]
        for key, stat in GRAD_STATS.items():
            expected = stat(named[name].grad.double()).item()
            error = abs(entry["grad"][key] - expected)
            assert error <= REL * max(abs(expected), floor), (name, key, entry["grad"][key])
    return derived


def test_plain_sequential_with_dropout_in_train_mode(client):
    factory = lambda: nn.Sequential(  # noqa: E731
        nn.Linear(3, 16), nn.GELU(approximate="tanh"), nn.LayerNorm(16), nn.Dropout(0.25),
        nn.Linear(16, 16), nn.LeakyReLU(), nn.RMSNorm(16), nn.ELU(), nn.Linear(16, 8),
        nn.SiLU(), nn.Softplus(), nn.Sigmoid(), nn.Linear(8, 2, bias=False),
    )  # fmt: skip
    derived = roundtrip(client, 4, factory, normal((6, 3), 1), "mse", normal((6, 2), 2))
    assert [layer["type"] for layer in derived.spec["layers"]][:4] == [
        "linear", "gelu_tanh", "layer_norm", "dropout",
    ]  # fmt: skip
    assert derived.spec["layers"][3] == {"type": "dropout", "p": 0.25}
    # A bare nn.Sequential: the service's names are the module's under `layers.`.
    assert all(ours == f"layers.{theirs}" for ours, theirs in derived.names.items())


def test_cnn_with_batch_norm(client):
    factory = lambda: Net(  # noqa: E731
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(6 * 2 * 2, 10),
    )  # fmt: skip
    target = torch.tensor([1, 7, 0, 9])
    derived = roundtrip(client, 11, factory, normal((4, 1, 12, 12), 3), "cross_entropy", target)
    assert derived.spec["layers"][0] == {
        "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1,
    }  # fmt: skip
    assert all(ours == theirs for ours, theirs in derived.names.items())


def test_conv1d_rms_norm_and_dropout_in_eval_mode(client):
    factory = lambda: Net(  # noqa: E731
        nn.Conv1d(2, 5, 3, stride=2), nn.BatchNorm1d(5), nn.SiLU(), nn.Dropout(0.3),
        nn.Flatten(), nn.RMSNorm(20), nn.Linear(20, 2, bias=False),
    )  # fmt: skip
    inputs = torch.rand((3, 2, 9), generator=torch.Generator().manual_seed(4)) * 2 - 1
    roundtrip(client, 2, factory, inputs, "mse", normal((3, 2), 5), mode="eval")


def test_conv_options_transposed_conv_channel_norms_and_dropout2d(client):
    factory = lambda: Net(  # noqa: E731
        nn.Conv2d(2, 4, 3, dilation=2, groups=2, padding="same", padding_mode="reflect"),
        nn.GroupNorm(2, 4), nn.ReLU(), nn.Dropout2d(0.3),
        nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2, bias=False),
        nn.InstanceNorm2d(6, affine=True), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d((2, 3)),
        nn.Flatten(), nn.Linear(36, 3),
    )  # fmt: skip
    target = torch.tensor([0, 2, 1])
    derived = roundtrip(client, 6, factory, normal((3, 2, 7, 7), 1), "cross_entropy", target)
    assert derived.spec["layers"][0] == {
        "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": "same", "dilation": 2,
        "groups": 2, "padding_mode": "reflect",
    }  # fmt: skip
    assert [layer["type"] for layer in derived.spec["layers"][1:8]] == [
        "group_norm", "relu", "dropout2d", "conv_transpose2d", "instance_norm", "max_pool2d",
        "adaptive_avg_pool2d",
    ]  # fmt: skip
    assert derived.spec["layers"][7]["output_size"] == [2, 3]


def test_1d_pools_transposed_conv_and_dropout1d(client):
    factory = lambda: Net(  # noqa: E731
        nn.Conv1d(3, 4, 3, padding=1, padding_mode="circular"), nn.InstanceNorm1d(4),
        nn.Dropout1d(0.2), nn.MaxPool1d(2), nn.AvgPool1d(3, stride=1, padding=1),
        nn.ConvTranspose1d(4, 2, 3, stride=2, output_padding=1, dilation=2),
        nn.AdaptiveMaxPool1d((4,)), nn.AdaptiveAvgPool1d(2), nn.Flatten(), nn.Linear(4, 1),
    )  # fmt: skip
    derived = roundtrip(client, 9, factory, normal((2, 3, 10), 2), "mse", normal((2, 1), 3))
    assert derived.spec["layers"][6] == {"type": "adaptive_max_pool1d", "output_size": 4}


@pytest.mark.parametrize(("norm", "shortcut"), [("pre", True), ("post", False), ("none", True)])
def test_transformer_stack(client, norm, shortcut):
    cfg = {"emb_dim": 16, "context_length": 6, "n_heads": 4, "drop_rate": 0.0, "qkv_bias": False}
    factory = lambda: Net(  # noqa: E731
        nn.Linear(8, 16),
        TransformerBlock(cfg, norm, shortcut),
        TransformerBlock(cfg, norm, shortcut),
        nn.LayerNorm(16), nn.Linear(16, 8),
    )  # fmt: skip
    derived = roundtrip(client, 5, factory, normal((2, 6, 8), 1))
    block = MODEL_SPEC.validate_python(derived.spec).layers[1]
    assert (block.type, block.heads, block.norm, block.shortcut, block.causal, block.ff_mult) == (
        "transformer_block", 4, norm, shortcut, True, 4,
    )  # fmt: skip


class MislabelledBlock(TransformerBlock):
    """Says pre-norm with shortcuts (its attributes, the first guess) but is post-norm without."""

    def forward(self, x):
        x = self.norm1(self.drop_shortcut(self.att(x)))
        return self.norm2(self.drop_shortcut(self.ff(x)))


def test_a_block_s_variant_is_read_off_its_output(client):
    cfg = {"emb_dim": 8, "context_length": 5, "n_heads": 2, "drop_rate": 0.0, "qkv_bias": True}
    factory = lambda: nn.Sequential(MislabelledBlock(cfg, "pre", True))  # noqa: E731
    derived = roundtrip(client, 3, factory, normal((2, 5, 8), 4))
    assert derived.spec["layers"] == [
        {"type": "transformer_block", "heads": 2, "norm": "post", "shortcut": False,
         "qkv_bias": True},
    ]  # fmt: skip


def test_embedding_and_attention_on_token_ids(client):
    factory = lambda: Net(  # noqa: E731
        nn.Embedding(10, 12),
        MultiHeadAttention(12, 12, 4, 0.0, 3, qkv_bias=True),
        nn.Linear(12, 10),
    )
    ids, target = (
        torch.tensor([[1, 4, 2, 9], [3, 3, 0, 7]]),
        # classes in dimension 1 of the (2, 4, 10) output, as F.cross_entropy takes them
        torch.tensor([[0, 2, 3, 1, 3, 0, 1, 2, 2, 0], [3, 1, 0, 0, 2, 3, 1, 1, 0, 2]]),
    )
    derived = roundtrip(client, 21, factory, ids, "cross_entropy", target)
    assert derived.spec["layers"][1] == {"type": "attention", "heads": 3, "qkv_bias": True}


def test_residual_mlp_with_projection(client):
    factory = lambda: Net(  # noqa: E731
        nn.Linear(3, 8),
        Residual([nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)]),
        Residual([nn.Linear(8, 4), nn.Tanh()], projection=nn.Linear(8, 4)),
        nn.Linear(4, 1),
    )
    derived = roundtrip(client, 17, factory, normal((5, 3), 9), "mse", torch.zeros(5, 1))
    assert [layer.get("projection", False) for layer in derived.spec["layers"][1:3]] == [
        False,
        True,
    ]


def test_residual_conv_with_1x1_projection(client):
    factory = lambda: Net(  # noqa: E731
        Residual([nn.Conv2d(2, 3, 3, padding=1), nn.ReLU()], projection=nn.Conv2d(2, 3, 1))
    )
    roundtrip(client, 8, factory, normal((2, 2, 5, 5), 2))


class Dense(nn.Module):
    """A user's DenseNet merge: its body's output and its input, concatenated (dim 1)."""

    def __init__(self, *body):
        super().__init__()
        self.body = nn.Sequential(*body)

    def forward(self, x):
        return torch.cat([self.body(x), x], dim=1)


def test_options_and_layers_the_grammar_has_now(client):
    factory = lambda: nn.Sequential(  # noqa: E731
        nn.Embedding(10, 8, padding_idx=2), nn.Unflatten(2, (2, 4)), nn.Flatten(2),
        Residual([nn.Linear(8, 6), nn.LeakyReLU(0.2)], projection=nn.Linear(8, 6)),
        nn.ELU(alpha=0.5), nn.Flatten(), Dense(nn.Linear(24, 6), nn.Softplus(beta=2, threshold=5)),
        nn.LeakyReLU(), nn.Linear(30, 10),
    )  # fmt: skip
    ids, target = torch.tensor([[1, 2, 2, 9], [3, 2, 0, 7]]), torch.tensor([4, 2])
    derived = roundtrip(client, 6, factory, ids, "cross_entropy", target)
    assert derived.spec["layers"][:5] == [
        {"type": "embedding", "num_embeddings": 10, "embedding_dim": 8, "padding_idx": 2},
        {"type": "unflatten", "dim": 2, "sizes": [2, 4]},
        {"type": "flatten", "start_dim": 2},
        {"type": "residual", "projection": "linear", "body": [  # on (N, T, D): not true's conv
            {"type": "linear", "out_features": 6}, {"type": "leaky_relu", "negative_slope": 0.2}]},
        {"type": "elu", "alpha": 0.5},
    ]  # fmt: skip
    assert derived.spec["layers"][6:8] == [
        {"type": "residual", "merge": "concat", "body": [
            {"type": "linear", "out_features": 6}, {"type": "softplus", "beta": 2.0,
                                                    "threshold": 5.0}]},
        {"type": "leaky_relu"},
    ]  # fmt: skip


def test_an_mlp_with_activation_options_is_sequential(client):
    factory = lambda: ExampleDeepNeuralNetwork([4, 6, 2], False, activation=lambda: nn.ELU(0.5))  # noqa: E731
    derived = roundtrip(client, 3, factory, normal((3, 4), 1), "mse", torch.zeros(3, 2))
    assert derived.spec["kind"] == "sequential"
    assert derived.spec["layers"][1] == {"type": "elu", "alpha": 0.5}


GPT_CASES = {
    # name: (config overrides of gpt-micro, norm, shortcut, mode)
    "micro": ({}, "pre", True, "train"),
    "post_norm_no_shortcut": ({"n_layers": 2}, "post", False, "train"),
    "no_norm": ({"n_layers": 2}, "none", True, "train"),
    "tiny_qkv_bias_dropout": (GPT_PRESETS["gpt-tiny"] | {"qkv_bias": True, "drop_rate": 0.2}, "pre",
                              True, "train"),
}  # fmt: skip


@pytest.mark.parametrize("name", GPT_CASES)
def test_course_gpt_gives_a_gpt_spec(client, name):
    overrides, norm, shortcut, mode = GPT_CASES[name]
    cfg = GPT_PRESETS["gpt-micro"] | overrides
    ids = torch.randint(0, cfg["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, cfg["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(2))
    factory = lambda: GPTModel(cfg, norm, shortcut)  # noqa: E731
    derived = roundtrip(client, 123, factory, ids, "cross_entropy", target, mode)
    spec = MODEL_SPEC.validate_python(derived.spec)
    assert spec.config() == cfg and (spec.norm, spec.shortcut) == (norm, shortcut)
    assert all(ours == theirs for ours, theirs in derived.names.items())


@pytest.mark.parametrize(
    ("sizes", "shortcut", "activation", "name"),
    [([3, 3, 3, 3, 3, 1], True, None, "gelu_tanh"), ([4, 6, 6, 2], False, nn.ReLU, "relu")],
)
def test_lesson_network_gives_an_mlp_spec(client, sizes, shortcut, activation, name):
    extra = {} if activation is None else {"activation": activation}  # None: the course's GELU
    factory = lambda: ExampleDeepNeuralNetwork(sizes, shortcut, **extra)  # noqa: E731
    inputs = normal((3, sizes[0]), 6)
    derived = roundtrip(client, 123, factory, inputs, "mse", torch.zeros(3, sizes[-1]))
    spec = MODEL_SPEC.validate_python(derived.spec)
    assert (spec.kind, spec.layer_sizes, spec.activation, spec.shortcut) == (
        "mlp", sizes, name, shortcut,
    )  # fmt: skip


SERVICE_SPECS = [
    ({"kind": "mlp", "layer_sizes": [3, 5, 5, 2], "activation": "softplus", "shortcut": True},
     normal((2, 3), 0)),
    ({"kind": "sequential", "layers": [
        {"type": "conv2d", "out_channels": 3, "kernel_size": 3, "stride": 2, "bias": False},
        {"type": "batch_norm", "momentum": 0.2, "affine": False}, {"type": "elu"},
        {"type": "residual", "projection": True, "body": [
            {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}]},
        {"type": "max_pool2d", "kernel_size": 2, "stride": 1}, {"type": "flatten"},
        {"type": "rms_norm", "eps": 1e-6}, {"type": "linear", "out_features": 2}]},
     normal((2, 1, 9, 9), 0)),
    ({"kind": "sequential", "layers": [
        {"type": "embedding", "num_embeddings": 9, "embedding_dim": 8},
        {"type": "attention", "heads": 2, "causal": False, "dropout": 0.1},
        {"type": "transformer_block", "heads": 4, "ff_mult": 2, "norm": "post", "causal": False},
        {"type": "layer_norm", "elementwise_affine": False}]},
     torch.tensor([[1, 2, 3], [4, 5, 6]])),
    ({"kind": "gpt", "preset": "gpt-micro", "n_layers": 2, "norm": "none", "shortcut": False},
     torch.tensor([[1, 2, 3, 4]])),
    ({"kind": "sequential", "layers": [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 2, "padding": "same", "groups": 2,
         "dilation": 2, "padding_mode": "replicate"},
        {"type": "group_norm", "num_groups": 2, "eps": 1e-3, "affine": False},
        {"type": "dropout2d", "p": 0.2},
        {"type": "conv_transpose2d", "out_channels": 2, "kernel_size": 3, "stride": 2,
         "output_padding": 1, "bias": False},
        {"type": "instance_norm", "track_running_stats": True, "momentum": 0.5},
        {"type": "adaptive_max_pool2d", "output_size": [3, 4]},
        {"type": "global_avg_pool"}]},
     normal((2, 2, 6, 6), 0)),
    ({"kind": "sequential", "layers": [
        {"type": "conv1d", "out_channels": 3, "kernel_size": 3, "padding": "valid"},
        {"type": "dropout1d", "p": 0.3}, {"type": "max_pool1d", "kernel_size": 2},
        {"type": "avg_pool1d", "kernel_size": 2, "stride": 1, "padding": 1},
        {"type": "adaptive_avg_pool1d", "output_size": 3},
        {"type": "conv_transpose1d", "out_channels": 3, "kernel_size": 2, "groups": 3},
        {"type": "global_max_pool"}]},
     normal((2, 2, 9), 0)),
    ({"kind": "sequential", "layers": [
        {"type": "embedding", "num_embeddings": 9, "embedding_dim": 8, "padding_idx": 1},
        {"type": "positional_embedding", "max_length": 5},
        {"type": "attention", "heads": 2, "layout": "torch", "bias": False, "causal": False},
        {"type": "transpose", "dim0": 1, "dim1": 2},
        {"type": "residual", "merge": "concat", "body": [
            {"type": "conv1d", "out_channels": 4, "kernel_size": 1}]},
        {"type": "permute", "dims": [0, 2, 1]}, {"type": "reshape", "shape": [-1]},
        {"type": "unflatten", "dim": 1, "sizes": [6, 6]},
        {"type": "residual", "projection": "linear", "body": [
            {"type": "linear", "out_features": 4}]},
        {"type": "flatten"}, {"type": "leaky_relu", "negative_slope": 0.3},
        {"type": "elu", "alpha": 2.0}, {"type": "softplus", "beta": 0.5, "threshold": 10.0}]},
     torch.tensor([[1, 2, 3], [4, 5, 6]])),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "inputs"), SERVICE_SPECS)
def test_the_service_s_own_modules_give_back_their_spec(spec, inputs):
    model = MODEL_SPEC.validate_python(spec)
    # Drawn weights: torch.empty's may hold NaN, which no output check passes.
    module, _ = build_seeded(lambda: MODEL_KINDS[spec["kind"]].build(model, tuple(inputs.shape)), 0)
    derived = MODEL_SPEC.validate_python(spec_from_module(module, inputs))
    if spec["kind"] == "gpt":  # a preset comes back as its values
        assert (derived.config(), derived.norm, derived.shortcut) == (
            model.config(), model.norm, model.shortcut,
        )  # fmt: skip
    else:
        assert derived == model


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return x * self.gain


class Double(nn.Module):
    def forward(self, x):
        return 2 * x


class Block(nn.Module):
    """Children in order, but a functional activation between them."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class Skip(nn.Module):
    """A shortcut written out rather than through Residual(body, projection)."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def forward(self, x):
        return x + self.inner(x)


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.fc(x))


def padded_gpt():
    model = GPTModel(GPT_PRESETS["gpt-micro"])
    model.tok_emb.padding_idx = 0
    return model


def tied_gpt():
    model = GPTModel(GPT_PRESETS["gpt-micro"])
    model.out_head.weight = model.tok_emb.weight
    return model


X, IDS, IMAGES = normal((2, 4), 0), torch.tensor([[1, 2, 3]]), normal((1, 2, 8, 8), 0)
REFUSALS = {
    "lstm": (nn.Sequential(nn.Linear(4, 4), nn.LSTM(4, 4)), X,
             "1: nn.LSTM is not in the grammar; supported: nn.Sequential"),
    "softmax": (nn.Sequential(nn.Softmax(dim=-1)), X, "0: nn.Softmax is not in the grammar"),
    "torch_attention": (nn.Sequential(nn.MultiheadAttention(4, 2)), normal((2, 3, 4), 0),
                        "0: nn.MultiheadAttention is not in the grammar"),
    "custom_parameters": (Net(nn.Linear(4, 4), Scale()), X,
                          "layers.1: Scale is not in the grammar"),
    "custom_parameterless": (nn.Sequential(Double()), X, "0: Double is not in the grammar"),
    "dilation": (nn.Sequential(nn.Conv2d(2, 2, 3, dilation=(1, 2))), IMAGES,
                 "0: nn.Conv2d with dilation=(1, 2): the grammar has one dilation for all"),
    "output_padding": (nn.Sequential(nn.ConvTranspose2d(2, 2, 3, 2, output_padding=(0, 1))),
                       IMAGES, "0: nn.ConvTranspose2d with output_padding=(0, 1)"),
    "adaptive_none": (nn.Sequential(nn.AdaptiveAvgPool2d((None, 2))), IMAGES,
                      "0: nn.AdaptiveAvgPool2d with output_size=(None, 2)"),
    "adaptive_indices": (nn.Sequential(nn.AdaptiveMaxPool2d(2, return_indices=True)), IMAGES,
                         "0: nn.AdaptiveMaxPool2d with return_indices=True"),
    "cumulative_instance_norm": (
        nn.Sequential(nn.InstanceNorm2d(2, momentum=None, track_running_stats=True)), IMAGES,
        "0: nn.InstanceNorm2d with momentum=None"),
    "dropout2d_on_a_flat_input": (
        nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.MaxPool2d(2), nn.GroupNorm(2, 2),
                      nn.Dropout2d(), nn.Flatten(), nn.Dropout2d()), IMAGES,
        "<module>: the service refuses the derived spec: layer 5 (dropout2d)"),
    "non_square_kernel": (nn.Sequential(nn.Conv2d(2, 2, (3, 5))), IMAGES,
                          "0: nn.Conv2d with kernel_size=(3, 5): the grammar's kernels are square"),
    "ceil_mode": (nn.Sequential(nn.MaxPool2d(3, ceil_mode=True)), IMAGES,
                  "0: nn.MaxPool2d with ceil_mode=True"),
    "count_include_pad": (nn.Sequential(nn.AvgPool2d(3, padding=1, count_include_pad=False)),
                          IMAGES, "0: nn.AvgPool2d with count_include_pad=False"),
    "layer_norm_without_bias": (nn.Sequential(nn.LayerNorm(4, bias=False)), X,
                                "0: nn.LayerNorm with bias=False"),
    "layer_norm_over_two_dims": (nn.Sequential(nn.LayerNorm((2, 4))), normal((3, 2, 4), 0),
                                 "0: nn.LayerNorm with normalized_shape=(2, 4)"),
    "softplus_negative_beta": (nn.Sequential(nn.Softplus(beta=-1)), X,
                               "0: nn.Softplus maps to {'type': 'softplus', 'beta': -1.0}, "
                               "which the grammar refuses: softplus.beta: Input should be "),
    "cumulative_batch_norm": (nn.Sequential(nn.BatchNorm1d(4, momentum=None)), X,
                              "0: nn.BatchNorm1d with momentum=None"),
    "max_norm": (nn.Sequential(nn.Embedding(5, 4, max_norm=1.0)), IDS,
                 "0: nn.Embedding with max_norm=1.0"),
    "embedding_not_first": (nn.Sequential(nn.Identity(), nn.Embedding(5, 4)), IDS,
                            "<module>: the service refuses the derived spec: an embedding takes"),
    "tied_gpt_head": (tied_gpt(), IDS, "out_head.weight: is the same tensor as tok_emb.weight"),
    "functional_call": (Net(nn.Linear(4, 4), Block()), X,
                        "layers.1: Block computes something other than its children"),
    "written_out_shortcut": (Skip(), X, "<module>: Skip computes something other than"),
    "called_twice": (Twice(), X, "fc: is called 2 times: the grammar has no shared weights"),
    # Last: the modules above draw their weights from the global stream at import.
    "gpt_padding_idx": (padded_gpt(), IDS, "tok_emb: nn.Embedding with padding_idx=0: the gpt"),
}  # fmt: skip


@pytest.mark.parametrize("name", REFUSALS)
def test_what_the_grammar_lacks_is_refused_by_path(name):
    module, inputs, message = REFUSALS[name]
    with pytest.raises(UnsupportedModule, match=f"^{re.escape(message)}"):
        spec_from_module(module, inputs)


def test_a_course_block_with_another_forward_is_refused():
    class Doubled(TransformerBlock):  # the course's parts, another computation
        def forward(self, x):
            return 2 * super().forward(x)

    cfg = {"emb_dim": 8, "context_length": 4, "n_heads": 2, "drop_rate": 0.0, "qkv_bias": False}
    message = "0: Doubled has the parts of the grammar's transformer_block but computes"
    with pytest.raises(UnsupportedModule, match=f"^{re.escape(message)}"):
        spec_from_module(nn.Sequential(Doubled(cfg)), normal((1, 4, 8), 0))
