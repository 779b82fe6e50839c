"""Recurrent layers (`rnn`, `lstm`, `gru`) against nn.RNN / nn.LSTM / nn.GRU used directly after
torch.manual_seed; their gradient through time against an independent unrolled loop
(tests/reference_recurrent.py)."""

import threading

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from service.architectures.init import build_seeded
from service.architectures.registry import MODEL_KINDS
from service.diagnostics.through_time import ThroughTime, replay
from service.errors import Cancelled
from service.schemas.models import SequentialSpec
from service.schemas.requests import Thresholds
from tests.reference_recurrent import unrolled
from tests.test_errors import assert_problem
from tests.test_parity_architectures import assert_parity, diagnose, normal

N, T, D, H, OUT = 3, 7, 4, 5, 2
PLAIN = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}

BI = {"bidirectional": True}
CASES = {
    # name: (type, options, output); train mode but for `_eval`
    "lstm_2_layers_bidirectional_last": ("lstm", {"num_layers": 2, **BI}, "last"),
    "lstm_proj_sequence": ("lstm", {"proj_size": 3}, "sequence"),
    "lstm_proj_2_layers_bidirectional": ("lstm", {"proj_size": 2, "num_layers": 2, **BI}, "last"),
    "lstm_no_bias": ("lstm", {"bias": False}, "sequence"),
    "rnn_relu_no_bias": ("rnn", {"nonlinearity": "relu", "bias": False}, "sequence"),
    "rnn_tanh_2_layers_bidirectional_last": ("rnn", {"num_layers": 2, **BI}, "last"),
    "gru_2_layers_bidirectional": ("gru", {"num_layers": 2, **BI}, "sequence"),
    "gru_no_bias_last": ("gru", {"bias": False}, "last"),
    "lstm_dropout": ("lstm", {"num_layers": 3, "dropout": 0.4, **BI}, "last"),
    "gru_dropout": ("gru", {"num_layers": 2, "dropout": 0.5}, "sequence"),
    "rnn_relu_dropout": (
        "rnn",
        {"num_layers": 2, "dropout": 0.3, "nonlinearity": "relu"},
        "sequence",
    ),
    "lstm_dropout_eval": ("lstm", {"num_layers": 2, "dropout": 0.5}, "last"),
}


def mode(case):
    return "eval" if case.endswith("_eval") else "train"


def width(options):
    return (2 if options.get("bidirectional") else 1) * (options.get("proj_size") or H)


def body(kind, options, output, mode="train", dtype=None, seed=3):
    layer = {"type": kind, "hidden_size": H, "output": output, **options}
    target = [N, OUT] if output == "last" else [N, T, OUT]
    return {
        "model": {"kind": "sequential", "layers": [layer, {"type": "linear", "out_features": OUT}]},
        "input": {"shape": [N, T, D], "distribution": "normal", "seed": 1},
        "target": {"shape": target, "distribution": "normal", "seed": 2},
        "loss": "mse",
        "seed": seed,
        "mode": mode,
        **({"dtype": dtype} if dtype else {}),
    }


class Reference(nn.Module):
    """A user's model: an nn.LSTM (or RNN, GRU) and a linear head, as `layers.0`, `layers.1`."""

    def __init__(self, kind, options, output):
        super().__init__()
        rnn = PLAIN[kind](D, H, batch_first=True, **options)
        self.layers = nn.ModuleList([rnn, nn.Linear(width(options), OUT)])
        self.output = output

    def head(self, sequence):
        return self.layers[1](sequence[:, -1] if self.output == "last" else sequence)

    def forward(self, x):
        return self.head(self.layers[0](x)[0])


def reference(case, dtype=torch.float32, seed=3):
    kind, options, output = CASES[case]
    torch.manual_seed(seed)
    model = Reference(kind, options, output).to(dtype).train(mode(case) == "train")
    target = normal([N, OUT] if output == "last" else [N, T, OUT], 2).to(dtype)
    return model, normal((N, T, D), 1).to(dtype), target


@pytest.mark.parametrize("case", CASES)
def test_loss_and_every_gradient_match_pytorch(client, case):
    """Names, initial values, loss and gradients; with dropout in train mode, the masks too
    (on the CPU they are those nn.LSTM draws from the global generator)."""
    model, x, target = reference(case)
    loss = F.mse_loss(model(x), target)
    loss.backward()
    report = diagnose(client, body(*CASES[case], mode(case)))
    assert_parity(report, model, loss)
    _, options, output = CASES[case]
    shape = [N, width(options)] if output == "last" else [N, T, width(options)]
    assert report["layers"][0]["output_shape"] == shape
    assert report["through_time"][0]["layer"] == "layers.0"


def test_a_language_model_on_token_ids(client):
    ids = [[1, 4, 2, 9, 3], [3, 3, 0, 7, 1]]
    request = {
        "model": {"kind": "sequential", "layers": [
            {"type": "embedding", "num_embeddings": 10, "embedding_dim": 6},
            {"type": "lstm", "hidden_size": 8, "num_layers": 2},
            {"type": "linear", "out_features": 10},
            {"type": "transpose", "dim0": 1, "dim1": 2},  # (N, classes, T), as F.cross_entropy
        ]},
        "input": ids,
        "target": [[4, 2, 9, 3, 0], [3, 0, 7, 1, 5]],
        "loss": "cross_entropy",
        "seed": 4,
    }  # fmt: skip
    torch.manual_seed(4)
    embedding, lstm, head = (
        nn.Embedding(10, 6),
        nn.LSTM(6, 8, 2, batch_first=True),
        nn.Linear(8, 10),
    )
    model = nn.Module()
    model.layers = nn.ModuleList([embedding, lstm, head])
    logits = head(lstm(embedding(torch.tensor(ids)))[0])
    loss = F.cross_entropy(logits.transpose(1, 2), torch.tensor(request["target"]))
    loss.backward()
    report = diagnose(client, request)
    assert_parity(report, model, loss)
    assert report["through_time"][0]["layer"] == "layers.1"


def expected_norms(case, dtype):
    """‖∂L/∂h_t‖ from the unrolled loop, per (layer, direction), in the service's order."""
    model, x, target = reference(case, dtype)
    rnn = model.layers[0]
    state = torch.get_rng_state()
    fused = rnn(x)[0]
    torch.set_rng_state(state)  # the loop draws the same dropout masks
    sequence, states = unrolled(rnn, x)
    torch.testing.assert_close(sequence, fused)  # the loop is the model
    F.mse_loss(model.head(sequence), target).backward()
    return {key: [h.grad.norm().item() for h in hidden] for key, hidden in states.items()}


@pytest.mark.parametrize(
    ("case", "dtype", "rel"),
    [(case, "float64", 1e-9) for case in CASES]
    + [("lstm_2_layers_bidirectional_last", "float32", 1e-4)],
)
def test_through_time_norms_match_an_unrolled_loop(client, case, dtype, rel):
    expected = expected_norms(case, getattr(torch, dtype))
    report = diagnose(client, body(*CASES[case], mode(case), dtype=dtype))
    (layer,) = report["through_time"]
    assert (layer["type"], layer["steps"]) == (CASES[case][0], T)
    assert [(s["layer"], s["direction"]) for s in layer["series"]] == [
        (i, "reverse" if d else "forward") for i, d in expected
    ]
    for series, norms in zip(layer["series"], expected.values(), strict=True):
        floor = rel * max(norms)
        for got, want in zip(series["grad_norms"], norms, strict=True):
            assert abs(got - want) <= rel * want + floor, (series["layer"], got, want)
        processed = norms[::-1] if series["direction"] == "reverse" else norms
        if processed[-1] > floor:
            ratio = processed[0] / processed[-1]
            assert series["first_to_last_ratio"] == pytest.approx(ratio, rel=1e3 * rel)


def test_the_reverse_direction_of_a_last_step_head_sees_one_step(client):
    """output[:, -1] holds the reverse direction's first step: no gradient reaches the others."""
    report = diagnose(client, body("gru", {"bidirectional": True}, "last"))
    forward, reverse = report["through_time"][0]["series"]
    assert all(v > 0 for v in forward["grad_norms"])
    assert reverse["grad_norms"][:-1] == [0.0] * (T - 1) and reverse["grad_norms"][-1] > 0
    assert reverse["first_to_last_ratio"] is None and reverse["horizon"] is None
    assert (
        "layers.0 (gru) layer 0 reverse: no gradient at its last step (t = 0)"
        in (report["diagnosis"]["findings"])
    )


def test_an_lstm_keeps_its_gradient_through_200_steps_better_than_a_tanh_rnn(client):
    """At PyTorch's default initialisation, a loss on the last of 200 steps: both vanish, the
    LSTM far less (float64: in float32 both norms underflow to 0 long before t = 0)."""
    ratios = {}
    for kind in ("lstm", "rnn"):
        request = {
            "model": {"kind": "sequential", "layers": [
                {"type": kind, "hidden_size": 32, "output": "last"},
                {"type": "linear", "out_features": 1},
            ]},
            "input": {"shape": [4, 200, 8], "distribution": "normal", "seed": 1},
            "target": {"shape": [4, 1], "distribution": "normal", "seed": 2},
            "dtype": "float64",
            "seed": 0,
        }  # fmt: skip
        report = diagnose(client, request)
        (layer,) = report["through_time"]
        ratios[kind] = layer["series"][0]["first_to_last_ratio"]
        assert layer["verdict"] == report["diagnosis"]["verdict"] == "vanishing"
        assert any(kind in finding for finding in report["diagnosis"]["findings"])
    vanishing = Thresholds().vanishing
    assert ratios["rnn"] > 0 and ratios["lstm"] / ratios["rnn"] > 1 / vanishing, ratios


def test_a_recurrent_layer_in_a_residual_body_is_measured(client):
    request = body("lstm", {}, "sequence")
    request["model"]["layers"][0] = {
        "type": "residual",
        "body": [{"type": "gru", "hidden_size": D}],
    }
    report = diagnose(client, request)
    assert report["through_time"][0]["layer"] == "layers.0.body.0"
    assert "through_time" in report["timing_ms"]


def test_models_without_recurrent_layers_have_no_through_time(client):
    request = {
        "model": {"kind": "mlp", "layer_sizes": [3, 2]},
        "input": [[1.0, 2.0, 3.0]],
        "loss": "sum",
    }
    report = diagnose(client, request)
    assert "through_time" not in report and "through_time" not in report["timing_ms"]


def _built(layer, shape):
    spec = SequentialSpec.model_validate({"kind": "sequential", "layers": [layer]})
    kind = MODEL_KINDS["sequential"]
    module, _ = build_seeded(lambda: kind.build(spec, shape), 0)
    return module


def test_the_replay_stops_at_the_step_it_is_cancelled():
    module = _built({"type": "lstm", "hidden_size": 4}, (2, 50, 3))
    x = torch.randn(2, 50, 3)
    calls = []

    def check():
        calls.append(1)
        if len(calls) == 10:
            raise Cancelled

    with pytest.raises(Cancelled):
        replay(module.layers[0], x, [], torch.ones(2, 50, 4), check)
    assert len(calls) == 10


def test_a_cancelled_run_measures_nothing_and_the_probes_are_removed():
    module = _built({"type": "rnn", "hidden_size": 4, "output": "last"}, (2, 6, 3))
    cancel = threading.Event()
    through = ThroughTime(module, cancel)
    with through.recording():
        module(torch.randn(2, 6, 3)).sum().backward()
    assert module.layers[0].probe is None
    cancel.set()
    with pytest.raises(Cancelled):
        through.measure(Thresholds())
    assert through.records == []  # nothing of the run is kept


def sequential(layers, shape):
    return {
        "model": {"kind": "sequential", "layers": layers},
        "input": {"shape": shape, "distribution": "normal"},
        "loss": "sum",
    }


CONV = {"type": "conv2d", "out_channels": 2, "kernel_size": 1}
LAST = {"type": "rnn", "hidden_size": 4, "output": "last"}
REFUSED = {
    # name: (body, code, loc, words in the message)
    "2d_input": (
        sequential([{"type": "lstm", "hidden_size": 4}], [2, 8]),
        "shape_mismatch", ["body", "model", "layers", 0],
        ["layer 0", "lstm", "[2, 8]", "(N, T, D)"],
    ),
    "4d_input_after_a_conv": (
        sequential([CONV, {"type": "gru", "hidden_size": 4}], [1, 3, 4, 4]),
        "shape_mismatch", ["body", "model", "layers", 1], ["layer 1", "gru", "[1, 2, 4, 4]"],
    ),
    "last_output_into_another_rnn": (
        sequential([LAST, {"type": "rnn", "hidden_size": 4}], [2, 5, 3]),
        "shape_mismatch", ["body", "model", "layers", 1], ["layer 1", "[2, 4]"],
    ),
    "flat_input": (
        sequential([{"type": "lstm", "hidden_size": 4}], [5]),
        "shape_mismatch", ["body", "input"], ["(batch, time steps, features)"],
    ),
    "dropout_with_one_layer": (
        sequential([{"type": "lstm", "hidden_size": 4, "dropout": 0.2}], [2, 5, 3]),
        "invalid_request", ["body", "model", "layers", 0, "dropout"], ["num_layers"],
    ),
    "proj_size_not_smaller": (
        sequential([{"type": "lstm", "hidden_size": 4, "proj_size": 4}], [2, 5, 3]),
        "invalid_request", ["body", "model", "layers", 0, "proj_size"],
        ["smaller than hidden_size"],
    ),
    "proj_size_on_a_gru": (
        sequential([{"type": "gru", "hidden_size": 4, "proj_size": 2}], [2, 5, 3]),
        "invalid_request", ["body", "model", "layers", 0, "proj_size"], [],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", REFUSED)
def test_refused_with_the_field_located(client, name):
    request, code, loc, words = REFUSED[name]
    problem = assert_problem(client.post("/v1/diagnostics", json=request), 422, code, loc)
    for word in words:
        assert word in problem["detail"], (word, problem["detail"])


def test_the_budget_counts_the_replay():
    """Twice the FLOPs of one pass: the replay is one more forward and backward."""
    spec = SequentialSpec.model_validate(
        {"kind": "sequential", "layers": [{"type": "lstm", "hidden_size": 64}]}
    )
    estimate = MODEL_KINDS["sequential"].signature(spec, (8, 100, 32), ("body",)).estimate
    matmuls = 2 * 8 * 100 * 4 * 64 * (32 + 64)  # one forward's
    assert 6 * matmuls <= estimate.flops <= 8 * matmuls
    assert estimate.parameters == sum(p.numel() for p in nn.LSTM(32, 64).parameters())


def test_a_cached_model_measures_the_same_again(client):
    request = body("lstm", {"num_layers": 2, "dropout": 0.5}, "last")
    first, again = diagnose(client, request), diagnose(client, request)
    assert first["through_time"] == again["through_time"]
    assert first["parameters"] == again["parameters"]
