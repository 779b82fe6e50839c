"""Convolution options, transposed convolutions, pools, channel norms and channel dropout of
the `sequential` grammar against plain PyTorch: the same models built after
torch.manual_seed(seed) from nn modules, loss and per-parameter gradient statistics within
2e-4 relative (assert_parity), initial weights and dropout masks bit-identical; specs that
PyTorch would refuse are refused first, naming the layer and the shape it got."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from service.architectures.init import build_seeded
from service.architectures.modules import GlobalPool, SeededDropout
from service.architectures.registry import MODEL_KINDS
from service.schemas.models import SequentialSpec
from tests.test_errors import assert_problem
from tests.test_parity_architectures import Net, assert_parity, build, diagnose, normal

URL = "/v1/diagnostics"


def body(layers, shape, seed, **extra):
    return {
        "model": {"kind": "sequential", "layers": layers},
        "input": {"shape": shape, "distribution": "normal", "seed": 3},
        "loss": "sum",
        "seed": seed,
        **extra,
    }


# Each case: the layers, the input shape, the loss, the plain-PyTorch modules in that order.
CONV2D = [
    {"type": "conv2d", "out_channels": 6, "kernel_size": 3, "padding": "same", "dilation": 2,
     "groups": 2, "padding_mode": "reflect"},
    {"type": "group_norm", "num_groups": 3},
    {"type": "relu"},
    {"type": "conv2d", "out_channels": 6, "kernel_size": 3, "stride": 2, "padding": 1,
     "padding_mode": "circular", "groups": 3, "bias": False},
    {"type": "instance_norm", "affine": True},
    {"type": "dropout2d", "p": 0.3},
    {"type": "conv_transpose2d", "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1,
     "output_padding": 1, "groups": 2},
    {"type": "adaptive_max_pool2d", "output_size": [3, 2]},
    {"type": "flatten"},
    {"type": "linear", "out_features": 5},
]  # fmt: skip


def conv2d_modules():
    return [
        nn.Conv2d(4, 6, 3, padding="same", dilation=2, groups=2, padding_mode="reflect"),
        nn.GroupNorm(3, 6), nn.ReLU(),
        nn.Conv2d(6, 6, 3, stride=2, padding=1, padding_mode="circular", groups=3, bias=False),
        nn.InstanceNorm2d(6, affine=True), nn.Dropout2d(0.3),
        nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2),
        nn.AdaptiveMaxPool2d((3, 2)), nn.Flatten(), nn.Linear(24, 5),
    ]  # fmt: skip


CONV1D = [
    # An even kernel: 'same' pads one more on the right.
    {"type": "conv1d", "out_channels": 8, "kernel_size": 4, "padding": "same",
     "padding_mode": "replicate"},
    {"type": "instance_norm"},
    {"type": "tanh"},
    {"type": "dropout1d", "p": 0.25},
    {"type": "max_pool1d", "kernel_size": 3, "stride": 2, "padding": 1},
    {"type": "conv1d", "out_channels": 8, "kernel_size": 3, "groups": 8, "dilation": 3,
     "padding": "valid"},
    {"type": "avg_pool1d", "kernel_size": 2},
    {"type": "conv_transpose1d", "out_channels": 4, "kernel_size": 4, "stride": 3,
     "dilation": 2, "output_padding": 2, "padding": 1},
    {"type": "adaptive_avg_pool1d", "output_size": 5},
    {"type": "group_norm", "num_groups": 2, "affine": False},
    {"type": "global_max_pool"},
    {"type": "linear", "out_features": 2},
]  # fmt: skip


def conv1d_modules():
    return [
        nn.Conv1d(4, 8, 4, padding="same", padding_mode="replicate"),
        nn.InstanceNorm1d(8), nn.Tanh(), nn.Dropout1d(0.25),
        nn.MaxPool1d(3, 2, 1), nn.Conv1d(8, 8, 3, groups=8, dilation=3, padding="valid"),
        nn.AvgPool1d(2),
        nn.ConvTranspose1d(8, 4, 4, stride=3, dilation=2, output_padding=2, padding=1),
        nn.AdaptiveAvgPool1d(5), nn.GroupNorm(2, 4, affine=False),
        nn.Sequential(nn.AdaptiveMaxPool1d(1), nn.Flatten()),  # global_max_pool
        nn.Linear(4, 2),
    ]  # fmt: skip


# The common classifier head: global average pooling, then a linear layer.
GAP_HEAD = [
    {"type": "conv2d", "out_channels": 5, "kernel_size": 3, "padding": 1, "padding_mode": "zeros"},
    {"type": "batch_norm"},
    {"type": "relu"},
    {"type": "adaptive_avg_pool2d", "output_size": 4},
    {"type": "conv2d", "out_channels": 6, "kernel_size": 2, "dilation": 2, "padding": 1},
    {"type": "instance_norm", "track_running_stats": True, "momentum": 0.3, "affine": True},
    {"type": "global_avg_pool"},
    {"type": "linear", "out_features": 3},
]


def gap_head_modules():
    return [
        nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        nn.Conv2d(5, 6, 2, dilation=2, padding=1),
        nn.InstanceNorm2d(6, momentum=0.3, affine=True, track_running_stats=True),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),  # global_avg_pool
        nn.Linear(6, 3),
    ]  # fmt: skip


CASES = {
    # name: (layers, input shape, modules, loss, mode)
    "conv2d_options_train": (CONV2D, [2, 4, 9, 9], conv2d_modules, "cross_entropy", "train"),
    "conv2d_options_eval": (CONV2D, [2, 4, 9, 9], conv2d_modules, "cross_entropy", "eval"),
    "conv1d_options_train": (CONV1D, [3, 4, 16], conv1d_modules, "mse", "train"),
    "gap_head_train": (GAP_HEAD, [4, 3, 8, 8], gap_head_modules, "cross_entropy", "train"),
    "gap_head_eval": (GAP_HEAD, [4, 3, 8, 8], gap_head_modules, "cross_entropy", "eval"),
}


@pytest.mark.parametrize("name", CASES)
def test_the_grammar_matches_plain_pytorch(client, name):
    layers, shape, modules, loss_name, mode = CASES[name]
    seed = 7
    model = build(seed, lambda: Net(*modules()))
    model.train(mode == "train")
    output = model(normal(shape, 3))  # dropout masks continue the global stream
    request = body(layers, shape, seed, mode=mode, loss=loss_name)
    if loss_name == "cross_entropy":
        target = torch.arange(shape[0]) % output.shape[1]
        loss = F.cross_entropy(output, target)
        request["target"] = target.tolist()
    else:
        target = normal(tuple(output.shape), 5)
        loss = F.mse_loss(output, target)
        request["target"] = {"shape": list(output.shape), "distribution": "normal", "seed": 5}
    loss.backward()
    report = diagnose(client, request)
    assert_parity(report, model, loss)
    assert report["output_shape"] == list(output.shape)


def _service_module(layers, shape, seed):
    """The service's module as a run uses it: seeded construction, then the dropout generator
    where the initialisation left it (InitialModel.prepare on the CPU)."""
    spec = SequentialSpec.model_validate({"kind": "sequential", "layers": layers})
    kind = MODEL_KINDS["sequential"]
    module, generator = build_seeded(lambda: kind.build(spec, tuple(shape)), seed)
    for sub in module.modules():
        if isinstance(sub, SeededDropout):
            sub.generator = generator
    return module


@pytest.mark.parametrize("name", ["conv2d_options_train", "conv1d_options_train"])
def test_initial_weights_and_channel_dropout_masks_are_bit_identical(name):
    layers, shape, modules, _, _ = CASES[name]
    ours = _service_module(layers, shape, 11)
    torch.manual_seed(11)
    theirs = Net(*modules())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    for (name_, mine), (_, plain) in zip(
        ours.named_parameters(), theirs.named_parameters(), strict=True
    ):
        assert torch.equal(mine, plain), name_
    x = normal(shape, 3)
    # Twice: the second pass's masks continue the stream past the first's.
    for _ in range(2):
        assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(("spatial", "shape"), [(1, [3, 5, 7]), (2, [3, 5, 4, 4])])
def test_channel_dropout_after_a_weighted_layer_draws_nn_dropout_s_masks(spatial, shape, dtype):
    conv = {"type": f"conv{spatial}d", "out_channels": 6, "kernel_size": 1}
    drop = {"type": f"dropout{spatial}d", "p": 0.4}
    ours = _service_module([conv, drop, drop], shape, 5).to(dtype)
    torch.manual_seed(5)
    cls = nn.Conv1d if spatial == 1 else nn.Conv2d
    dropout = nn.Dropout1d(0.4) if spatial == 1 else nn.Dropout2d(0.4)
    theirs = Net(cls(5, 6, 1), dropout, dropout).to(dtype)
    x = normal(shape, 1).to(dtype)
    out = ours(x)
    assert torch.equal(out, theirs(x))
    zeroed = (out == 0).flatten(2).all(-1)
    assert zeroed.any() and not zeroed.all()  # whole channels dropped, not all of them


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 5), (2, 3, 2, 3, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_global_pools_are_adaptive_pools_to_size_1_then_flatten(shape, dtype):
    x = normal(shape, 2).to(dtype)
    adaptive = {3: (F.adaptive_avg_pool1d, F.adaptive_max_pool1d),
                4: (F.adaptive_avg_pool2d, F.adaptive_max_pool2d),
                5: (F.adaptive_avg_pool3d, F.adaptive_max_pool3d)}[len(shape)]  # fmt: skip
    assert torch.equal(GlobalPool("avg")(x), adaptive[0](x, 1).flatten(1))
    assert torch.equal(GlobalPool("max")(x), adaptive[1](x, 1).flatten(1))


def test_global_max_pool_routes_a_tied_channel_s_gradient_to_one_element(client):
    # After a ReLU whole channels can be zero: adaptive max pooling picks one of the ties.
    layers = [{"type": "conv2d", "out_channels": 4, "kernel_size": 1}, {"type": "relu"},
              {"type": "global_max_pool"}, {"type": "linear", "out_features": 2}]  # fmt: skip
    model = build(3, lambda: Net(
        nn.Conv2d(2, 4, 1), nn.ReLU(), nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten()),
        nn.Linear(4, 2),
    ))  # fmt: skip
    loss = model(normal((3, 2, 3, 3), 3)).sum()
    loss.backward()
    assert_parity(diagnose(client, body(layers, [3, 2, 3, 3], 3)), model, loss)


# Refusals ----------------------------------------------------------------------------------
def conv(**options):
    return {"type": "conv2d", "out_channels": 4, "kernel_size": 3, **options}


SHAPE_ERRORS = {
    # name: (layers, input shape, failing layer's loc under layers, words, what PyTorch raises on)
    "groups_do_not_divide_input_channels": (
        [conv(groups=2)], [1, 3, 8, 8], [0], ["layer 0 (conv2d)", "[1, 3, 8, 8]", "groups=2",
                                             "3 input channels"],
        lambda: nn.Conv2d(3, 4, 3, groups=2)),
    "groups_do_not_divide_output_channels": (
        [{"type": "linear", "out_features": 4}, {"type": "conv1d", "out_channels": 5,
                                                  "kernel_size": 1, "groups": 2}],
        [2, 4, 4], [1], ["layer 1 (conv1d)", "[2, 4, 4]", "5 output channels"],
        lambda: nn.Conv1d(4, 5, 1, groups=2)),
    "reflect_as_wide_as_the_input": (
        [{"type": "conv1d", "out_channels": 2, "kernel_size": 3, "padding": 4,
          "padding_mode": "reflect"}],
        [1, 1, 4], [0], ["layer 0 (conv1d)", "[1, 1, 4]", "reflect padding 4"],
        lambda: nn.Conv1d(1, 2, 3, padding=4, padding_mode="reflect")),
    "same_reflect_of_a_dilated_kernel": (
        [conv(padding="same", dilation=3, padding_mode="reflect")], [1, 2, 3, 9], [0],
        ["layer 0 (conv2d)", "[1, 2, 3, 9]", "reflect padding 3"],
        lambda: nn.Conv2d(2, 4, 3, padding="same", dilation=3, padding_mode="reflect")),
    "circular_wraps_twice": (
        [conv(padding=6, padding_mode="circular")], [1, 2, 5, 8], [0],
        ["layer 0 (conv2d)", "circular padding 6", "5"],
        lambda: nn.Conv2d(2, 4, 3, padding=6, padding_mode="circular")),
    "dilated_kernel_spans_more_than_the_input": (
        [conv(dilation=4)], [1, 2, 6, 6], [0], ["layer 0 (conv2d)", "[1, 2, 6, 6]", "spans 9"],
        lambda: nn.Conv2d(2, 4, 3, dilation=4)),
    "transposed_output_too_small": (
        [{"type": "conv_transpose2d", "out_channels": 2, "kernel_size": 1, "padding": 1}],
        [1, 2, 2, 2], [0], ["layer 0 (conv_transpose2d)", "[1, 2, 2, 2]", "size 0"],
        lambda: nn.ConvTranspose2d(2, 2, 1, padding=1)),
    "transposed_groups": (
        [{"type": "conv_transpose1d", "out_channels": 4, "kernel_size": 2, "groups": 4}],
        [1, 6, 5], [0], ["layer 0 (conv_transpose1d)", "groups=4", "6 input channels"],
        lambda: nn.ConvTranspose1d(6, 4, 2, groups=4)),
    "transposed_2d_on_3d": (
        [{"type": "conv_transpose2d", "out_channels": 2, "kernel_size": 2}],
        [1, 2, 5], [0], ["layer 0 (conv_transpose2d)", "[1, 2, 5]", "(N, C, H, W)"], None),
    "pool1d_on_4d": (
        [{"type": "max_pool1d", "kernel_size": 2}], [1, 2, 4, 4], [0],
        ["layer 0 (max_pool1d)", "[1, 2, 4, 4]", "(N, C, L)"], None),
    "avg_pool1d_too_big": (
        [{"type": "avg_pool1d", "kernel_size": 5}], [1, 2, 4], [0],
        ["layer 0 (avg_pool1d)", "kernel 5"], lambda: nn.AvgPool1d(5)),
    "pool1d_padding_over_half": (
        [{"type": "max_pool1d", "kernel_size": 2, "padding": 2}], [1, 2, 8], [0],
        ["layer 0 (max_pool1d)", "half the kernel"], lambda: nn.MaxPool1d(2, padding=2)),
    "adaptive_2d_on_3d": (
        [{"type": "adaptive_avg_pool2d", "output_size": 2}], [1, 2, 5], [0],
        ["layer 0 (adaptive_avg_pool2d)", "[1, 2, 5]"], None),
    "global_pool_on_flat": (
        [{"type": "flatten"}, {"type": "global_avg_pool"}], [2, 3, 4, 4], [1],
        ["layer 1 (global_avg_pool)", "[2, 48]", "(N, C, L)"], None),
    "group_norm_groups": (
        [{"type": "group_norm", "num_groups": 4}], [2, 6, 3], [0],
        ["layer 0 (group_norm)", "[2, 6, 3]", "num_groups=4", "6 channels"],
        lambda: nn.GroupNorm(4, 6)),
    "instance_norm_on_2d": (
        [{"type": "instance_norm"}], [2, 6], [0], ["layer 0 (instance_norm)", "[2, 6]"], None),
    "instance_norm_one_element": (
        [{"type": "adaptive_avg_pool2d", "output_size": 1}, {"type": "instance_norm"}],
        [2, 3, 4, 4], [1], ["layer 1 (instance_norm)", "[2, 3, 1, 1]", "more than 1 spatial"],
        lambda: nn.InstanceNorm2d(3)),
    "dropout2d_on_3d": (
        [{"type": "dropout2d"}], [2, 3, 4], [0], ["layer 0 (dropout2d)", "(N, C, H, W)"], None),
    "dropout1d_on_4d": (
        [{"type": "dropout1d"}], [2, 3, 4, 4], [0], ["layer 0 (dropout1d)", "(N, C, L)"],
        lambda: nn.Dropout1d()),
    "inside_a_residual": (
        [{"type": "residual", "body": [conv(groups=3, padding=1)]}], [1, 4, 5, 5],
        [0, "body", 0], ["layer 0 (conv2d)", "groups=3"], lambda: nn.Conv2d(4, 4, 3, groups=3)),
}  # fmt: skip


def _input_of(layers, shape, index):
    """The input the failing top-level layer gets, computed with plain PyTorch."""
    x = torch.zeros(shape)
    if index == 1 and layers[0]["type"] == "linear":
        return torch.zeros((*shape[:-1], layers[0]["out_features"]))
    if index == 1 and layers[0]["type"] == "adaptive_avg_pool2d":
        return F.adaptive_avg_pool2d(x, 1)
    return x


@pytest.mark.parametrize("name", SHAPE_ERRORS)
def test_what_pytorch_refuses_is_refused_first_naming_the_layer(client, name):
    layers, shape, where, words, plain = SHAPE_ERRORS[name]
    loc = ["body", "model", "layers", *where]
    problem = assert_problem(
        client.post(URL, json=body(layers, shape, 0)), 422, "shape_mismatch", loc
    )
    message = next(e["msg"] for e in problem["errors"] if e["loc"] == loc)
    for word in words:
        assert word in message, (word, message)
    if plain is not None:  # PyTorch refuses it too: building the module or running it
        with pytest.raises((RuntimeError, ValueError)):
            plain()(_input_of(layers, shape, where[0]))


INVALID = {
    # name: (layer, loc under the layer, words)
    "same_with_stride": (conv(padding="same", stride=2), [], ["strided"]),
    "output_padding_not_below_stride": (
        {"type": "conv_transpose2d", "out_channels": 2, "kernel_size": 3, "stride": 2,
         "output_padding": 2}, [], ["output_padding"]),
    "pair_for_a_1d_pool": (
        {"type": "adaptive_max_pool1d", "output_size": [2, 2]}, [], ["one int"]),
    "unknown_padding_mode": (conv(padding_mode="mirror"), ["padding_mode"], []),
    "unknown_padding_word": (conv(padding="full"), ["padding"], []),
    "zero_groups": (conv(groups=0), ["groups"], []),
    "three_sizes": ({"type": "adaptive_avg_pool2d", "output_size": [1, 2, 3]}, ["output_size"], []),
}  # fmt: skip


@pytest.mark.parametrize("name", INVALID)
def test_specs_pytorch_would_not_build_are_invalid_requests(client, name):
    layer, under, words = INVALID[name]
    response = client.post(URL, json=body([layer], [1, 2, 8, 8], 0))
    problem = assert_problem(response, 422, "invalid_request")
    locs = [e["loc"] for e in problem["errors"]]
    expected = ["body", "model", "layers", 0, *under]  # a union's member may follow
    assert any(loc[: len(expected)] == expected for loc in locs), locs
    for word in words:
        assert word in problem["detail"], problem["detail"]


BOUNDARIES = {
    # Specs at the edge of what PyTorch accepts run, and match it.
    "reflect_one_less_than_the_input": (
        [{"type": "conv1d", "out_channels": 2, "kernel_size": 3, "padding": 3,
          "padding_mode": "reflect"}], [2, 1, 4],
        lambda: nn.Conv1d(1, 2, 3, padding=3, padding_mode="reflect")),
    "circular_once_around": (
        [conv(padding=5, padding_mode="circular")], [1, 2, 5, 6],
        lambda: nn.Conv2d(2, 4, 3, padding=5, padding_mode="circular")),
    "kernel_spans_the_padded_input": (
        [conv(dilation=3, padding=1)], [1, 2, 5, 5],
        lambda: nn.Conv2d(2, 4, 3, dilation=3, padding=1)),
    "transposed_output_of_1": (
        [{"type": "conv_transpose2d", "out_channels": 2, "kernel_size": 3, "padding": 1}],
        [1, 2, 1, 1], lambda: nn.ConvTranspose2d(2, 2, 3, padding=1)),
    "output_padding_below_dilation": (
        [{"type": "conv_transpose1d", "out_channels": 2, "kernel_size": 2, "dilation": 3,
          "output_padding": 2}], [1, 2, 3],
        lambda: nn.ConvTranspose1d(2, 2, 2, dilation=3, output_padding=2)),
    "adaptive_pool_larger_than_its_input": (
        [{"type": "conv1d", "out_channels": 2, "kernel_size": 1},
         {"type": "adaptive_max_pool1d", "output_size": 7}], [2, 1, 3],
        lambda: nn.Sequential(nn.Conv1d(1, 2, 1), nn.AdaptiveMaxPool1d(7))),
}  # fmt: skip


@pytest.mark.parametrize("name", BOUNDARIES)
def test_specs_at_pytorch_s_limits_run(client, name):
    layers, shape, plain = BOUNDARIES[name]
    model = build(2, lambda: Net(plain()))
    loss = model(normal(shape, 3)).sum()
    loss.backward()
    report = diagnose(client, body(layers, shape, 2))
    assert report["output_shape"] == list(model(normal(shape, 3)).shape)
    assert abs(report["loss"] - loss.item()) <= 2e-4 * max(1.0, abs(loss.item()))


def test_a_first_layer_on_a_flat_input_says_what_it_takes(client):
    request = body([{"type": "conv_transpose2d", "out_channels": 2, "kernel_size": 2}], [4], 0)
    problem = assert_problem(client.post(URL, json=request), 422, "shape_mismatch")
    assert "(batch, channels, height, width)" in problem["detail"]


def _plain(layer, channels):
    """The plain-PyTorch module of a random layer below, written out independently."""
    t, o = layer["type"], {k: v for k, v in layer.items() if k != "type"}
    if t.startswith("conv_transpose"):
        cls = nn.ConvTranspose1d if t.endswith("1d") else nn.ConvTranspose2d
        return cls(channels, o.pop("out_channels"), o.pop("kernel_size"), **o)
    if t.startswith("conv"):
        cls = nn.Conv1d if t.endswith("1d") else nn.Conv2d
        return cls(channels, o.pop("out_channels"), o.pop("kernel_size"), **o)
    pools = {"max_pool1d": nn.MaxPool1d, "avg_pool1d": nn.AvgPool1d,
             "max_pool2d": nn.MaxPool2d, "avg_pool2d": nn.AvgPool2d}  # fmt: skip
    return pools[t](**o)


def _random_layer(rng):
    kind = rng.choice(["conv", "conv_transpose", "pool"])
    dims = rng.choice(["1d", "2d"])
    if kind == "pool":
        layer = {"type": rng.choice(["max_pool", "avg_pool"]) + dims,
                 "kernel_size": rng.randint(1, 5), "padding": rng.randint(0, 3)}  # fmt: skip
        if rng.random() < 0.5:
            layer["stride"] = rng.randint(1, 3)
        return layer
    layer = {"type": kind + dims, "out_channels": rng.choice([2, 3, 4, 6]),
             "kernel_size": rng.randint(1, 5), "stride": rng.randint(1, 3),
             "dilation": rng.randint(1, 3), "groups": rng.choice([1, 2, 3])}  # fmt: skip
    if kind == "conv":
        layer["padding"] = rng.choice([0, 1, 2, 4, "same", "valid"])
        layer["padding_mode"] = rng.choice(["zeros", "reflect", "replicate", "circular"])
    else:
        layer["padding"] = rng.randint(0, 4)
        layer["output_padding"] = rng.randint(0, 2)
    return layer


def test_shape_rules_agree_with_pytorch_on_random_specs():
    """Whatever the rules refuse PyTorch refuses (or, for some transposed convolutions, gives
    an empty output); whatever they accept PyTorch runs, to the shape they inferred."""
    import random

    from pydantic import ValidationError

    from service.errors import ShapeMismatch

    rng, kind, outcomes = random.Random(0), MODEL_KINDS["sequential"], set()
    for _ in range(400):
        layer = _random_layer(rng)
        shape = (
            2,
            rng.choice([2, 3, 6]),
            *[rng.randint(1, 7)] * (1 if "1d" in layer["type"] else 2),
        )
        try:
            spec = SequentialSpec.model_validate({"kind": "sequential", "layers": [layer]})
            inferred = kind.signature(spec, shape, ()).output_shape
        except (ValidationError, ShapeMismatch) as refusal:
            try:
                empty = _plain(layer, shape[1])(torch.zeros(shape)).numel() == 0
            except (RuntimeError, ValueError):
                empty = True
            assert empty, layer  # ConvTranspose1d returns an empty output we refuse
            outcomes.add(type(refusal).__name__)
            continue
        assert tuple(_plain(layer, shape[1])(torch.zeros(shape)).shape) == inferred, layer
        outcomes.add("ran")
    assert outcomes == {"ValidationError", "ShapeMismatch", "ran"}
