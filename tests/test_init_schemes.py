"""`init`: each scheme and parameter equals `torch.manual_seed(seed)`, plain construction,
then the `torch.nn.init` calls a user writes, in spec order: the same weights bit for bit
(the served hash of the initial weights is the hash of the plain model's), the same
gradients (within 2e-4 relative, as the other parity tests)."""

import itertools
import threading

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from service.diagnostics.model_cache import hash_parameters
from tests.reference_gpt import GPTModel, MultiHeadAttention, TransformerBlock
from tests.test_errors import assert_problem
from tests.test_parity_architectures import Net, Residual, assert_parity, diagnose, normal


def torch_init(tensor, scheme, generator=None):
    """The user's call: `nn.init.<scheme>_(tensor, **parameters)`."""
    scheme = {"scheme": scheme} if isinstance(scheme, str) else scheme
    parameters = {k: v for k, v in scheme.items() if k != "scheme"}
    if generator is not None:
        parameters["generator"] = generator
    getattr(nn.init, scheme["scheme"] + "_")(tensor, **parameters)


def assert_same_model(report, model, loss):
    assert report["provenance"]["init_sha256"] == hash_parameters(model)
    assert_parity(report, model, loss)


SCHEMES = [
    ("xavier_uniform", None),
    ({"scheme": "xavier_uniform", "gain": 2.5}, "zeros"),
    ({"scheme": "xavier_normal", "gain": 0.5}, "ones"),
    ("kaiming_uniform", {"scheme": "constant", "val": -0.25}),
    ({"scheme": "kaiming_uniform", "a": 0.2, "mode": "fan_out"}, None),
    ({"scheme": "kaiming_normal", "mode": "fan_out", "nonlinearity": "relu"}, "normal"),
    ({"scheme": "kaiming_normal", "nonlinearity": "tanh"}, {"scheme": "uniform", "a": -0.3}),
    ({"scheme": "kaiming_normal", "nonlinearity": "selu"}, None),
    ({"scheme": "orthogonal", "gain": 1.3}, "trunc_normal"),
    ("orthogonal", None),
    ({"scheme": "trunc_normal", "mean": 0.1, "std": 0.5, "a": -0.4, "b": 0.9}, None),
    ({"scheme": "trunc_normal", "std": 0.02}, None),
    # [a, b] holds less than 0.3 of the mass: trunc_normal_'s uniform proposals
    ({"scheme": "trunc_normal", "a": 0.1, "b": 0.5}, {"scheme": "trunc_normal", "b": -1.0}),
    ({"scheme": "normal", "mean": 0.1, "std": 2.0}, {"scheme": "normal", "std": 0.0}),
    ({"scheme": "uniform", "a": -0.3, "b": 0.7}, {"scheme": "uniform", "a": 2, "b": 2}),
    ({"scheme": "constant", "val": 0.25}, None),
    ("zeros", "uniform"),
    ("ones", {"scheme": "trunc_normal", "mean": 1.0, "std": 3.0, "a": -1.0, "b": 1.5}),
]


@pytest.mark.parametrize(("weight", "bias"), SCHEMES, ids=[str(w) for w, _ in SCHEMES])
def test_each_scheme_equals_torch_nn_init(client, weight, bias):
    init = {"weight": weight} | ({"bias": bias} if bias else {})
    body = {
        "model": {
            "kind": "sequential",
            "init": init,
            "layers": [
                {"type": "linear", "out_features": 6},
                {"type": "tanh"},
                {"type": "conv1d", "out_channels": 3, "kernel_size": 2},
                {"type": "flatten"},
                {"type": "linear", "out_features": 2},
            ],
        },
        "input": {"shape": [4, 2, 5], "distribution": "normal", "seed": 3},
        "target": {"shape": [4, 2], "distribution": "normal", "seed": 4},
        "seed": 31,
    }
    torch.manual_seed(31)
    model = Net(nn.Linear(5, 6), nn.Tanh(), nn.Conv1d(2, 3, 2), nn.Flatten(), nn.Linear(15, 2))
    for layer in (model.layers[0], model.layers[2], model.layers[4]):
        torch_init(layer.weight, weight)
        if bias:
            torch_init(layer.bias, bias)
    loss = F.mse_loss(model(normal((4, 2, 5), 3)), normal((4, 2), 4))
    loss.backward()
    assert_same_model(diagnose(client, body), model, loss)


def test_layer_inits_on_token_layers_in_spec_order(client):
    """Embedding, attention (four weights, then the biases), a transformer block (its
    linears' weights; its LayerNorms keep ones and zeros), layer and RMS norms."""
    kaiming = {"scheme": "kaiming_uniform", "mode": "fan_out", "nonlinearity": "linear"}
    body = {
        "model": {
            "kind": "sequential",
            "layers": [
                {"type": "embedding", "num_embeddings": 10, "embedding_dim": 8,
                 "init": {"weight": {"scheme": "normal", "std": 0.02}}},
                {"type": "attention", "heads": 2, "qkv_bias": True,
                 "init": {"weight": "xavier_uniform", "bias": "zeros"}},
                {"type": "layer_norm", "init": {"weight": {"scheme": "uniform", "a": 0.5},
                                                "bias": {"scheme": "normal", "std": 0.1}}},
                {"type": "transformer_block", "heads": 2,
                 "init": {"weight": kaiming, "bias": {"scheme": "constant", "val": 0.01}}},
                {"type": "rms_norm", "init": {"weight": "trunc_normal"}},
                {"type": "linear", "out_features": 10, "init": {"weight": "orthogonal"}},
            ],
        },
        "input": [[1, 4, 2, 9], [3, 3, 0, 7]],
        "loss": "sum",
        "seed": 21,
    }  # fmt: skip
    cfg = {"emb_dim": 8, "context_length": 4, "n_heads": 2, "drop_rate": 0.0, "qkv_bias": False}
    torch.manual_seed(21)
    model = Net(
        nn.Embedding(10, 8),
        MultiHeadAttention(8, 8, 4, 0.0, 2, qkv_bias=True),
        nn.LayerNorm(8),
        TransformerBlock(cfg),
        nn.RMSNorm(8),
        nn.Linear(8, 10),
    )
    embedding, attention, layer_norm, block, rms_norm, head = model.layers
    nn.init.normal_(embedding.weight, std=0.02)
    for linear in (attention.W_query, attention.W_key, attention.W_value, attention.out_proj):
        nn.init.xavier_uniform_(linear.weight)
    for linear in (attention.W_query, attention.W_key, attention.W_value, attention.out_proj):
        nn.init.zeros_(linear.bias)
    nn.init.uniform_(layer_norm.weight, a=0.5)
    nn.init.normal_(layer_norm.bias, std=0.1)
    att, ff = block.att, block.ff.layers
    for linear in (att.W_query, att.W_key, att.W_value, att.out_proj, ff[0], ff[2]):
        nn.init.kaiming_uniform_(linear.weight, mode="fan_out", nonlinearity="linear")
    for linear in (att.out_proj, ff[0], ff[2]):  # qkv_bias is false in the block
        nn.init.constant_(linear.bias, 0.01)
    nn.init.trunc_normal_(rms_norm.weight)
    nn.init.orthogonal_(head.weight)
    ids = torch.tensor(body["input"])
    loss = model(ids).sum()
    loss.backward()
    report = diagnose(client, body)
    assert_same_model(report, model, loss)
    scale = report["parameters"][
        [p["name"] for p in report["parameters"]].index("layers.3.norm1.scale")
    ]
    assert scale["value"]["min"] == scale["value"]["max"] == 1.0


def test_layer_inits_on_conv_layers_and_a_residual_projection(client):
    body = {
        "model": {
            "kind": "sequential",
            "layers": [
                {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1,
                 "init": {"weight": {"scheme": "kaiming_normal", "mode": "fan_out",
                                     "nonlinearity": "relu"}, "bias": "zeros"}},
                {"type": "batch_norm", "init": {"weight": {"scheme": "normal", "mean": 1.0,
                                                           "std": 0.02}, "bias": "uniform"}},
                {"type": "relu"},
                {"type": "residual", "projection": True, "init": {"weight": "xavier_normal"},
                 "body": [
                     {"type": "conv2d", "out_channels": 6, "kernel_size": 3, "padding": 1,
                      "init": {"weight": {"scheme": "orthogonal", "gain": 1.4}}},
                     {"type": "relu"},
                 ]},
                {"type": "flatten"},
                {"type": "linear", "out_features": 3},
            ],
        },
        "input": {"shape": [2, 1, 5, 5], "distribution": "normal", "seed": 6},
        "target": [0, 2],
        "loss": "cross_entropy",
        "seed": 12,
    }  # fmt: skip
    torch.manual_seed(12)
    model = Net(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        Residual([nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()], projection=nn.Conv2d(4, 6, 1)),
        nn.Flatten(), nn.Linear(150, 3),
    )  # fmt: skip
    conv, batch_norm, _, residual, _, _ = model.layers
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(conv.bias)
    nn.init.normal_(batch_norm.weight, mean=1.0, std=0.02)
    nn.init.uniform_(batch_norm.bias)
    nn.init.orthogonal_(residual.body[0].weight, gain=1.4)  # the body first: spec order
    nn.init.xavier_normal_(residual.projection.weight)  # its bias keeps its default
    loss = F.cross_entropy(model(normal((2, 1, 5, 5), 6)), torch.tensor([0, 2]))
    loss.backward()
    assert_same_model(diagnose(client, body), model, loss)


def test_model_default_and_layer_overrides(client):
    """The model's init reaches every layer with a weight matrix but norms; a layer's own
    init replaces it as a whole (`{}` keeps PyTorch's defaults)."""
    body = {
        "model": {
            "kind": "sequential",
            "init": {"weight": "xavier_normal", "bias": {"scheme": "uniform", "a": -0.1, "b": 0.1}},
            "layers": [
                {"type": "linear", "out_features": 8},
                {"type": "layer_norm"},
                {"type": "relu"},
                {"type": "linear", "out_features": 8, "init": {}},
                {"type": "relu"},
                {"type": "linear", "out_features": 8, "init": {"weight": "kaiming_normal"}},
                {"type": "residual", "body": [{"type": "linear", "out_features": 8}]},
                {"type": "linear", "out_features": 2, "bias": False},
            ],
        },
        "input": {"shape": [3, 5], "distribution": "normal", "seed": 1},
        "target": {"shape": [3, 2], "distribution": "normal", "seed": 2},
        "seed": 4,
    }
    torch.manual_seed(4)
    model = Net(
        nn.Linear(5, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
        nn.Linear(8, 8), Residual([nn.Linear(8, 8)]), nn.Linear(8, 2, bias=False),
    )  # fmt: skip
    layers = model.layers
    for linear in (layers[0], layers[5], layers[6].body[0], layers[7]):
        if linear is layers[5]:
            nn.init.kaiming_normal_(linear.weight)
            continue
        nn.init.xavier_normal_(linear.weight)
        if linear.bias is not None:
            nn.init.uniform_(linear.bias, -0.1, 0.1)
    loss = F.mse_loss(model(normal((3, 5), 1)), normal((3, 2), 2))
    loss.backward()
    assert_same_model(diagnose(client, body), model, loss)


def test_gpt2_style_default_on_the_course_gpt_with_dropout(client):
    """normal(0, 0.02) weights, zero biases: the embeddings, each block's linears (weights,
    then biases), the head; dropout masks continue the stream after the init's draws."""
    from service.schemas.models import GPT_PRESETS

    cfg = GPT_PRESETS["gpt-micro"] | {"drop_rate": 0.2, "qkv_bias": True, "n_layers": 2}
    ids = [[1, 4, 2, 9, 0], [3, 3, 0, 7, 5]]
    target = [[4, 2, 9, 1, 1], [3, 0, 7, 7, 2]]
    body = {
        "model": {"kind": "gpt", "preset": "gpt-micro", "drop_rate": 0.2, "qkv_bias": True,
                  "n_layers": 2, "init": {"weight": {"scheme": "normal", "std": 0.02},
                                          "bias": "zeros"}},
        "input": ids, "target": target, "loss": "cross_entropy", "seed": 9, "mode": "train",
    }  # fmt: skip
    torch.manual_seed(9)
    model = GPTModel(cfg)
    nn.init.normal_(model.tok_emb.weight, std=0.02)
    nn.init.normal_(model.pos_emb.weight, std=0.02)
    for block in model.trf_blocks:
        att, ff = block.att, block.ff.layers
        linears = (att.W_query, att.W_key, att.W_value, att.out_proj, ff[0], ff[2])
        for linear in linears:
            nn.init.normal_(linear.weight, std=0.02)
        for linear in linears:
            nn.init.zeros_(linear.bias)
    nn.init.normal_(model.out_head.weight, std=0.02)
    logits = model(torch.tensor(ids))
    loss = F.cross_entropy(logits.flatten(0, 1), torch.tensor(target).flatten())
    loss.backward()
    assert_same_model(diagnose(client, body), model, loss)


def test_mlp_default_in_float64_and_the_cache_key(client):
    body = {
        "model": {"kind": "mlp", "layer_sizes": [3, 4, 4, 1], "activation": "relu",
                  "init": {"weight": "kaiming_uniform"}},
        "input": [[1.0, 0.0, -1.0]], "target": [[0.5]], "seed": 2, "dtype": "float64",
    }  # fmt: skip
    torch.manual_seed(2)
    model = nn.Module()
    model.layers = nn.ModuleList(
        nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in ((3, 4), (4, 4), (4, 1))
    )
    for block in model.layers:
        nn.init.kaiming_uniform_(block[0].weight)
    model = model.double()
    x = torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64)
    for block in model.layers:
        x = block(x)
    loss = F.mse_loss(x, torch.tensor([[0.5]], dtype=torch.float64))
    loss.backward()
    report = diagnose(client, body)
    assert_same_model(report, model, loss)
    # The init is part of the cached model's key: another init, another model.
    other = diagnose(client, {**body, "model": {**body["model"], "init": {"weight": "ones"}}})
    assert other["provenance"]["init_sha256"] != report["provenance"]["init_sha256"]
    assert diagnose(client, body)["provenance"] == report["provenance"]


DEEP = [64] * 20 + [8]  # 8 outputs: a relu output layer rarely dies whole


def test_sweep_over_init_schemes_equals_plain_pytorch(client):
    """The classic question: which initialisation keeps a deep tanh / relu net trainable."""
    schemes = ["xavier_uniform", "kaiming_normal", {"scheme": "normal", "std": 1.0}]
    body = {
        "base": {
            "model": {"kind": "mlp", "layer_sizes": DEEP, "activation": "tanh"},
            "input": {"shape": [8, 64], "distribution": "normal", "seed": 1},
            "target": {"shape": [8, 8], "distribution": "normal", "seed": 2},
            "seed": 3,
        },
        "axes": [
            {"path": "model.activation", "values": ["tanh", "relu"]},
            {"path": "model.init.weight", "values": schemes},
        ],
    }
    response = client.post("/v1/sweeps", json=body)
    assert response.status_code == 200, response.text
    runs = response.json()["runs"]
    assert len(runs) == 6
    x, y = normal((8, 64), 1), normal((8, 8), 2)
    verdicts = {}
    for run in runs:
        activation = run["axes"]["model.activation"]
        scheme = schemes[run["point"]["model.init.weight"]]
        torch.manual_seed(3)
        blocks = [
            nn.Sequential(nn.Linear(a, b), nn.Tanh() if activation == "tanh" else nn.ReLU())
            for a, b in itertools.pairwise(DEEP)
        ]
        for block in blocks:
            torch_init(block[0].weight, scheme)
        loss = F.mse_loss(nn.Sequential(*blocks)(x), y)
        loss.backward()
        assert run["loss"] == pytest.approx(loss.item(), rel=2e-4)
        grads = [p.grad for block in blocks for p in block.parameters()]
        for entry, grad in zip(run["parameters"], grads, strict=True):
            assert entry["grad_mean_abs"] == pytest.approx(grad.abs().mean().item(), rel=2e-4)
        verdicts[activation, run["point"]["model.init.weight"]] = run["verdict"]
    # The answer (64 wide, 20 deep; the same verdicts at seeds 1 to 6): Xavier suits tanh,
    # Kaiming relu; N(0, 1) explodes either; Xavier's variance under relu vanishes with depth.
    assert verdicts == {
        ("tanh", 0): "healthy", ("tanh", 1): "healthy", ("tanh", 2): "exploding",
        ("relu", 0): "vanishing", ("relu", 1): "healthy", ("relu", 2): "exploding",
    }  # fmt: skip


class CountingEvent(threading.Event):
    """Never set; counts the cancellation checks."""

    checks = 0

    def is_set(self):
        self.checks += 1
        return False


CHUNKED = [
    "xavier_uniform",
    {"scheme": "xavier_normal", "gain": 0.7},
    "kaiming_uniform",
    {"scheme": "kaiming_normal", "mode": "fan_out", "nonlinearity": "relu"},
    {"scheme": "normal", "mean": 0.5, "std": 2.0},
    {"scheme": "uniform", "a": -1.0, "b": 3.0},
]


@pytest.mark.parametrize("scheme", CHUNKED, ids=str)
def test_chunked_draws_equal_one_call(monkeypatch, scheme):
    """Large tensors are drawn in chunks, checking for cancellation between them: the same
    numbers as one torch.nn.init call."""
    from service.architectures import init as seeded
    from service.architectures.init_schemes import Draw, apply_draws
    from service.schemas.init import Init

    monkeypatch.setattr(seeded, "DRAW_CHUNK", 32)
    ours, theirs = torch.empty(13, 11), torch.empty(13, 11)  # 143 elements: 4 chunks
    cancel = CountingEvent()
    apply_draws([Draw(ours, Init(weight=scheme).weight)], torch.Generator().manual_seed(5), cancel)
    torch_init(theirs, scheme, torch.Generator().manual_seed(5))
    assert torch.equal(ours, theirs)
    assert cancel.checks == 1 + 4


def test_draws_stop_once_cancelled():
    from service.architectures.init_schemes import Draw, apply_draws
    from service.errors import Cancelled
    from service.schemas.init import Init

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        apply_draws([Draw(torch.empty(4, 4), Init(weight="normal").weight)], None, cancel)


LINEAR = {"type": "linear", "out_features": 2}


def _request(second, init=None):
    """A linear, then `second` (layer 1); `init` the model's."""
    model = {"kind": "sequential", "layers": [LINEAR, second]}
    return {"model": model | ({"init": init} if init else {}), "input": [[1.0, 2.0]], "loss": "sum"}


def _linear_init(init):
    return _request({**LINEAR, "init": init})


INIT = ["body", "model", "layers", 1, "init"]
KAIMING_FAN_AVG = {"scheme": "kaiming_normal", "mode": "fan_avg"}
FAR_TAIL = {"scheme": "trunc_normal", "a": 4, "b": 40}
ERRORS = {
    "unknown_scheme": (_linear_init({"weight": "he_normal"}), [*INIT, "weight"]),
    "unknown_scheme_object": (
        _request(LINEAR, {"weight": {"scheme": "lecun"}}),
        ["body", "model", "init", "weight"],
    ),
    "missing_scheme": (_linear_init({"weight": {"std": 1.0}}), [*INIT, "weight", "scheme"]),
    "parameter_not_taken": (
        _linear_init({"weight": {"scheme": "normal", "gain": 2.0}}),
        [*INIT, "weight", "gain"],
    ),
    "negative_gain": (
        _linear_init({"weight": {"scheme": "xavier_normal", "gain": -1.0}}),
        [*INIT, "weight", "gain"],
    ),
    "bad_mode": (_linear_init({"weight": KAIMING_FAN_AVG}), [*INIT, "weight", "mode"]),
    "constant_needs_val": (_linear_init({"weight": "constant"}), [*INIT, "weight"]),
    "trunc_normal_far_tail": (_linear_init({"weight": FAR_TAIL}), [*INIT, "weight"]),
    "uniform_backwards": (
        _linear_init({"bias": {"scheme": "uniform", "a": 1, "b": 0}}),
        [*INIT, "bias"],
    ),
    "xavier_on_a_bias": (_linear_init({"bias": "xavier_uniform"}), [*INIT, "bias"]),
    "init_on_an_activation": (_request({"type": "relu", "init": {}}), INIT),
    "norm_without_parameters": (
        _request({"type": "layer_norm", "elementwise_affine": False, "init": {}}),
        INIT,
    ),
    "orthogonal_on_a_norm": (
        _request({"type": "batch_norm", "init": {"weight": "orthogonal"}}),
        [*INIT, "weight"],
    ),
    "kaiming_on_a_norm": (
        _request({"type": "rms_norm", "init": {"weight": "kaiming_normal"}}),
        [*INIT, "weight"],
    ),
    "bias_of_a_linear_without": (
        _request({**LINEAR, "bias": False, "init": {"bias": "zeros"}}),
        [*INIT, "bias"],
    ),
    "bias_of_an_rms_norm": (
        _request({"type": "rms_norm", "init": {"bias": "zeros"}}),
        [*INIT, "bias"],
    ),
    "residual_without_projection": (
        _request({"type": "residual", "body": [LINEAR], "init": {"weight": "ones"}}),
        INIT,
    ),
    "nested_in_a_residual_body": (
        _request(
            {
                "type": "residual",
                "body": [{"type": "layer_norm", "init": {"weight": "xavier_uniform"}}],
            }
        ),
        [*INIT[:-1], "body", 0, "init", "weight"],
    ),
}


@pytest.mark.parametrize("name", ERRORS)
def test_init_errors_are_located(client, name):
    body, loc = ERRORS[name]
    problem = assert_problem(client.post("/v1/diagnostics", json=body), 422, "invalid_request")
    assert [e["loc"] for e in problem["errors"]] == [loc], problem["errors"]


def test_capabilities_list_the_schemes_with_their_schemas(client):
    capabilities = client.get("/v1/capabilities").json()
    schemes = capabilities["init_schemes"]
    assert list(schemes)[:5] == [
        "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal"
    ]  # fmt: skip
    assert set(schemes["kaiming_normal"]["properties"]) == {"scheme", "a", "mode", "nonlinearity"}
    assert schemes["constant"]["required"] == ["scheme", "val"]
    assert "init" in capabilities["layer_types"]["linear"]["properties"]
    assert "init" in capabilities["model_kinds"]["gpt"]["properties"]


def test_layer_inits_on_the_newer_layers(client):
    """A recurrent layer's weights are weight_ih_l0, weight_hh_l0, … (then its biases); a
    transposed conv, a group norm and a learned positional table take theirs by name too."""
    body = {
        "model": {"kind": "sequential", "layers": [
            {"type": "conv_transpose1d", "out_channels": 4, "kernel_size": 3,
             "init": {"weight": {"scheme": "kaiming_normal", "nonlinearity": "relu"},
                      "bias": "zeros"}},
            {"type": "group_norm", "num_groups": 2, "init": {"weight": "normal"}},
            {"type": "transpose", "dim0": 1, "dim1": 2},
            {"type": "positional_embedding", "max_length": 8,
             "init": {"weight": {"scheme": "trunc_normal", "std": 0.02}}},
            {"type": "lstm", "hidden_size": 5, "num_layers": 2,
             "init": {"weight": "orthogonal", "bias": {"scheme": "constant", "val": 0.5}}},
        ]},
        "input": {"shape": [2, 3, 4], "distribution": "normal", "seed": 3},
        "loss": "sum",
        "seed": 8,
    }  # fmt: skip
    torch.manual_seed(8)
    conv, norm = nn.ConvTranspose1d(3, 4, 3), nn.GroupNorm(2, 4)
    table = nn.Embedding(8, 4)
    lstm = nn.LSTM(4, 5, 2, batch_first=True)
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    nn.init.zeros_(conv.bias)
    nn.init.normal_(norm.weight)
    nn.init.trunc_normal_(table.weight, std=0.02)
    for name in ("weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"):
        nn.init.orthogonal_(getattr(lstm, name))
    for name in ("bias_ih_l0", "bias_hh_l0", "bias_ih_l1", "bias_hh_l1"):
        nn.init.constant_(getattr(lstm, name), 0.5)

    class Positional(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = table.weight

        def forward(self, x):
            return x + self.weight[: x.shape[1]]

    model = Net(conv, norm, nn.Identity(), Positional(), lstm)
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(3))
    loss = lstm(model.layers[3](norm(conv(x)).transpose(1, 2)))[0].sum()
    loss.backward()
    report = diagnose(client, body)
    assert_same_model(report, model, loss)


def test_factorising_and_rejecting_draws_are_budgeted(make_client):
    # orthogonal_ factorises its weight (4·2048³ FLOPs here, one LAPACK call that no
    # cancellation interrupts: a 16384² linear took minutes within every limit) and holds Q
    # and R beside it; trunc_normal_'s rounds hold three tensors of its size.
    api = make_client(limits={"max_flops": 10**10, "max_memory_bytes": 50 << 20})
    body = {
        "model": {
            "kind": "sequential",
            "layers": [{"type": "linear", "out_features": 2048, "bias": False}],
            "init": {"weight": "orthogonal"},
        },
        "input": {"shape": [1, 2048], "distribution": "normal"},
        "loss": "sum",
    }
    problem = assert_problem(client_post(api, body), 422, "budget_exceeded")
    assert "flops" in problem["exceeded"]
    assert problem["estimate"]["flops"] >= 4 * 2048**3
    body["model"]["init"] = {"weight": "trunc_normal"}
    body["model"]["layers"][0]["out_features"] = 1024
    body["input"]["shape"] = [1, 1024]
    without = {**body, "model": {**body["model"], "init": None}}
    assert client_post(api, without).status_code == 200
    problem = assert_problem(client_post(api, body), 422, "budget_exceeded")
    assert problem["exceeded"] == ["memory_bytes"]
    body["model"]["init"] = {"weight": "orthogonal"}
    body["model"]["layers"][0]["out_features"] = 64
    assert client_post(api, body).status_code == 200


def client_post(api, body):
    return api.post("/v1/diagnostics", json=body)
