"""The seed experiment: the lesson's ten numbers through HTTP."""

import copy

import pytest
import torch

from service.schemas.requests import LESSON_REQUEST
from tests.conftest import close
from tests.reference import ExampleDeepNeuralNetwork

# The lesson's table (torch 2.13 CPU).
NO_SHORTCUT = {
    "layers.0.0.weight": 0.00020173587836325169,
    "layers.1.0.weight": 0.00012011159560643137,
    "layers.2.0.weight": 0.0007152040489017963,
    "layers.3.0.weight": 0.0013988736318424344,
    "layers.4.0.weight": 0.005049645435065031,
}
WITH_SHORTCUT = {
    "layers.0.0.weight": 0.22169798612594604,
    "layers.1.0.weight": 0.20694111287593842,
    "layers.2.0.weight": 0.3289700150489807,
    "layers.3.0.weight": 0.26657330989837646,
    "layers.4.0.weight": 1.3258544206619263,
}


def lesson(shortcut: bool) -> dict:
    request = copy.deepcopy(LESSON_REQUEST)
    request["model"]["shortcut"] = shortcut
    return request


def weight_grads(report: dict) -> dict[str, float]:
    return {p["name"]: p["grad"]["mean_abs"] for p in report["parameters"] if "weight" in p["name"]}


@pytest.mark.parametrize(("shortcut", "expected"), [(False, NO_SHORTCUT), (True, WITH_SHORTCUT)])
def test_lesson_numbers_over_http(client, shortcut, expected):
    response = client.post("/v1/diagnostics", json=lesson(shortcut))
    assert response.status_code == 200, response.text
    report = response.json()
    got = weight_grads(report)
    assert list(got) == list(expected)  # names and named_parameters() order
    for name, value in expected.items():
        assert close(got[name], value, rel=1e-5), (name, got[name], value)


def test_lesson_matches_the_notebook_code_run_here(client):
    torch.manual_seed(123)
    model = ExampleDeepNeuralNetwork([3, 3, 3, 3, 3, 1], use_shortcut=True)
    loss = torch.nn.MSELoss()(model(torch.tensor([[1.0, 0.0, -1.0]])), torch.tensor([[0.0]]))
    loss.backward()
    report = client.post("/v1/diagnostics", json=lesson(True)).json()
    assert close(report["loss"], loss.item())
    for entry, (name, param) in zip(report["parameters"], model.named_parameters(), strict=True):
        assert entry["name"] == name
        assert close(entry["grad"]["mean_abs"], torch.mean(torch.abs(param.grad)).item())


def test_lesson_verdicts(client):
    plain = client.post("/v1/diagnostics", json=lesson(False)).json()
    shortcut = client.post("/v1/diagnostics", json=lesson(True)).json()
    assert plain["diagnosis"]["verdict"] == "vanishing"
    assert plain["layers"][0]["verdict"] == "vanishing"
    assert plain["diagnosis"]["first_to_last_ratio"] < 0.01
    assert shortcut["diagnosis"]["verdict"] == "healthy"
    assert shortcut["diagnosis"]["first_to_last_ratio"] > 0.1
    assert [layer["name"] for layer in shortcut["layers"]] == [f"layers.{i}" for i in range(5)]


def test_lesson_as_one_compare_call(client):
    body = {
        "base": LESSON_REQUEST,
        "variants": {
            "plain": {"model": {"shortcut": False}},
            "shortcut": {"model": {"shortcut": True}},
        },
    }
    response = client.post("/v1/diagnostics/compare", json=body)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["baseline"] == "plain"
    assert close(
        weight_grads(report["runs"]["plain"])["layers.0.0.weight"], NO_SHORTCUT["layers.0.0.weight"]
    )
    assert close(
        weight_grads(report["runs"]["shortcut"])["layers.0.0.weight"],
        WITH_SHORTCUT["layers.0.0.weight"],
    )
    ratio = report["ratios"]["parameters"]["layers.0.0.weight"]
    assert ratio["plain"] == 1.0
    assert close(
        ratio["shortcut"],
        WITH_SHORTCUT["layers.0.0.weight"] / NO_SHORTCUT["layers.0.0.weight"],
        rel=1e-4,
    )
    assert set(report["ratios"]["layers"]) == {f"layers.{i}" for i in range(5)}


def test_provenance_and_timing(client):
    report = client.post("/v1/diagnostics", json=lesson(True)).json()
    provenance = report["provenance"]
    assert provenance["torch_version"] == torch.__version__.split("+")[0]
    assert provenance["seed"] == 123 and provenance["device"] == "cpu"
    assert provenance["dtype"] == "float32" and provenance["deterministic"] is True
    assert len(provenance["init_sha256"]) == 64
    assert set(report["timing_ms"]) == {"build", "forward", "backward", "statistics", "total"}
    again = client.post("/v1/diagnostics", json=lesson(False)).json()
    # Same seed and sizes: the same initial weights, whatever the shortcut switch says.
    assert again["provenance"]["init_sha256"] == provenance["init_sha256"]
