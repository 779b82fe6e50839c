"""The `resnet` kind against torchvision's ResNet written out plainly (tests/reference_resnet.py):
initial weights bit for bit, loss and per-parameter gradient statistics within 2e-4, the
reported blocks, parameter counts of the presets, and the refusals."""

import pytest
import torch
from torch.nn import functional as F

from service.architectures.init import build_seeded
from service.architectures.registry import MODEL_KINDS
from service.diagnostics.model_cache import hash_parameters
from service.schemas.models import RESNET_PRESETS, ResNetSpec
from tests import reference_resnet as tv
from tests.test_errors import assert_problem
from tests.test_parity_architectures import assert_parity, diagnose, normal

BLOCKS = {"basic": tv.BasicBlock, "bottleneck": tv.Bottleneck}

CASES = {
    # name: (spec beside kind, input shape, seed)
    "resnet18": ({"preset": "resnet18", "num_classes": 10}, (2, 3, 32, 32), 0),
    "resnet18_plain": ({"preset": "resnet18", "num_classes": 10, "shortcut": False},
                       (2, 3, 32, 32), 1),
    "resnet50_one_block_per_stage_zero_init": (
        {"preset": "resnet50", "layers": [1, 1, 1, 1], "num_classes": 5, "width_per_group": 16,
         "zero_init_residual": True}, (2, 3, 32, 32), 2),
    "basic_group_norm_zero_init": (
        {"block": "basic", "layers": [1, 2, 1, 1], "num_classes": 4, "norm": "group",
         "norm_groups": 16, "zero_init_residual": True}, (3, 2, 24, 20), 3),
    "basic_no_norm": ({"block": "basic", "layers": [1, 1, 1, 1], "num_classes": 3,
                       "norm": "none"}, (2, 1, 16, 16), 4),
    "resnext_no_norm_plain": (
        {"preset": "resnext50_32x4d", "layers": [1, 1, 1, 1], "groups": 4, "num_classes": 6,
         "norm": "none", "shortcut": False}, (2, 3, 32, 32), 5),
}  # fmt: skip


def reference(spec: dict, in_channels: int, seed: int) -> tv.ResNet:
    """torchvision's constructor after torch.manual_seed(seed), with the spec's config."""
    config = ResNetSpec.model_validate({"kind": "resnet", **spec}).config()
    torch.manual_seed(seed)
    return tv.ResNet(
        BLOCKS[config["block"]],
        config["layers"],
        num_classes=config["num_classes"],
        zero_init_residual=spec.get("zero_init_residual", False),
        groups=config["groups"],
        width_per_group=config["width_per_group"],
        norm_layer=tv.norm_layer(spec.get("norm", "batch"), spec.get("norm_groups", 32)),
        in_channels=in_channels,
        shortcut=spec.get("shortcut", True),
    )


@pytest.mark.parametrize("name", CASES)
def test_resnet_matches_torchvision(client, name):
    spec, shape, seed = CASES[name]
    model = reference(spec, shape[1], seed)
    classes = model.fc.out_features
    target = torch.randint(0, classes, (shape[0],), generator=torch.Generator().manual_seed(seed))
    body = {
        "model": {"kind": "resnet", **spec},
        "input": {"shape": list(shape), "distribution": "normal", "seed": 7},
        "target": target.tolist(),
        "loss": "cross_entropy",
        "seed": seed,
    }
    report = diagnose(client, body)
    assert report["provenance"]["init_sha256"] == hash_parameters(model)  # the initial bits
    loss = F.cross_entropy(model(normal(shape, 7)), target)
    loss.backward()
    assert_parity(report, model, loss)
    blocks = [f"layer{s}.{i}" for s in range(1, 5) for i in range(len(getattr(model, f"layer{s}")))]
    assert [layer["name"] for layer in report["layers"]] == blocks
    assert report["output_shape"] == [shape[0], model.fc.out_features]


def test_weights_and_generator_state_are_torchvision_s_bit_for_bit():
    # The construction-time draws of the convolutions (redrawn by the init loop) must still
    # advance the stream: the fc's weights and the generator after them show it.
    spec, shape, seed = CASES["resnet50_one_block_per_stage_zero_init"]
    resnet = ResNetSpec.model_validate({"kind": "resnet", **spec})
    ours, generator = build_seeded(lambda: MODEL_KINDS["resnet"].build(resnet, shape), seed)
    with torch.random.fork_rng():
        theirs = reference(spec, shape[1], seed)
        state = torch.random.get_rng_state()
    theirs_state = theirs.state_dict()
    assert list(ours.state_dict()) == list(theirs_state)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, theirs_state[name]), name
    assert torch.equal(generator.get_state(), state)
    assert ours.layer1[0].bn3.weight.abs().sum() == 0  # zero_init_residual


# torchvision's documented parameter counts (at 1000 classes, 3 input channels).
TORCHVISION_PARAMETERS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "wide_resnet50_2": 68_883_240,
}


@pytest.mark.parametrize("preset", RESNET_PRESETS)
def test_presets_have_torchvision_s_parameter_counts(preset):
    spec = ResNetSpec.model_validate({"kind": "resnet", "preset": preset})
    shape = (1, 3, 224, 224)
    kind = MODEL_KINDS["resnet"]
    with torch.device("meta"):
        built = kind.build(spec, shape)
    counted = sum(p.numel() for p in built.parameters())
    assert counted == kind.signature(spec, shape, ()).estimate.parameters
    assert counted == TORCHVISION_PARAMETERS[preset]


def test_plain_network_has_no_downsample():
    spec = ResNetSpec.model_validate({"kind": "resnet", "preset": "resnet18", "shortcut": False})
    with torch.device("meta"):
        built = MODEL_KINDS["resnet"].build(spec, (1, 3, 32, 32))
    assert not any("downsample" in name for name, _ in built.named_parameters())


def _body(model: dict, shape: list[int], **extra) -> dict:
    return {
        "model": {"kind": "resnet", **model},
        "input": {"shape": shape, "distribution": "normal"},
        "loss": "sum",
        **extra,
    }


TINY = {"block": "basic", "layers": [1, 1, 1, 1], "num_classes": 2}
REFUSALS = {
    # name: (body, code, loc, words)
    "image_without_batch": (_body(TINY, [3, 8, 8]), "shape_mismatch", ["body", "input"],
                            ["[3, 8, 8]", "(batch, channels, height, width)", "wrap"]),
    "flat_input": (_body(TINY, [2, 3]), "shape_mismatch", ["body", "input"], ["[2, 3]"]),
    "basic_block_with_groups": (_body({**TINY, "groups": 2}, [1, 3, 8, 8]), "invalid_request",
                                ["body", "model", "groups"], ["groups=2", "basic"]),
    "preset_groups_with_basic_block": (
        _body({"preset": "resnext50_32x4d", "block": "basic"}, [1, 3, 8, 8]), "invalid_request",
        ["body", "model", "block"], ["groups=32"]),
    "norm_groups_not_dividing": (
        _body({**TINY, "norm": "group", "norm_groups": 24}, [1, 3, 8, 8]), "shape_mismatch",
        ["body", "model", "norm_groups"], ["norm_groups=24", "64 channels", "bn1"]),
    "zero_init_without_norm": (
        _body({**TINY, "norm": "none", "zero_init_residual": True}, [1, 3, 8, 8]),
        "invalid_request", ["body", "model", "zero_init_residual"], ["norm"]),
    # A 16x16 image reaches layer4 as 1x1: with a batch of one, each batch norm channel there
    # holds one value, which PyTorch refuses in training mode.
    "one_value_per_batch_norm_channel": (_body(TINY, [1, 3, 16, 16]), "shape_mismatch",
                                         ["body", "model"], ["more than 1 value per channel"]),
}  # fmt: skip


@pytest.mark.parametrize("name", REFUSALS)
def test_refusals_name_the_field(client, name):
    body, code, loc, words = REFUSALS[name]
    problem = assert_problem(client.post("/v1/diagnostics", json=body), 422, code, loc)
    for word in words:
        assert word in problem["detail"], (word, problem["detail"])


def test_without_preset_block_and_layers_are_required(client):
    response = client.post("/v1/diagnostics", json=_body({"layers": [1, 1, 1, 1]}, [1, 3, 8, 8]))
    problem = assert_problem(response, 422, "invalid_request")
    assert "missing block" in problem["errors"][0]["msg"]


def test_a_batch_of_one_runs_in_eval_mode(client):
    report = diagnose(client, _body(TINY, [1, 3, 16, 16], mode="eval"))
    assert report["output_shape"] == [1, 2]


def test_capabilities_list_the_kind_and_its_presets(client):
    found = client.get("/v1/capabilities").json()
    assert found["resnet_presets"] == RESNET_PRESETS
    assert found["model_kinds"]["resnet"]["properties"]["preset"]["anyOf"][0]["enum"] == list(
        RESNET_PRESETS
    )


def test_a_model_wide_init_is_drawn_after_torchvision_s(client):
    """torchvision's construction and init loop, then the user's nn.init calls on every
    convolution and the fc, in registration order."""
    spec = {"block": "basic", "layers": [1, 1, 1, 1], "num_classes": 4}
    init = {"weight": {"scheme": "kaiming_uniform", "nonlinearity": "relu"}, "bias": "zeros"}
    shape, seed = (2, 3, 16, 16), 9
    model = reference(spec, shape[1], seed)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            torch.nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    target = torch.tensor([1, 3])
    body = {
        "model": {"kind": "resnet", **spec, "init": init},
        "input": {"shape": list(shape), "distribution": "normal", "seed": 7},
        "target": target.tolist(),
        "loss": "cross_entropy",
        "seed": seed,
    }
    report = diagnose(client, body)
    assert report["provenance"]["init_sha256"] == hash_parameters(model)
    loss = F.cross_entropy(model(normal(shape, 7)), target)
    loss.backward()
    assert_parity(report, model, loss)
