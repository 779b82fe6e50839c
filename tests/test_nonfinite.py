"""NaN and Inf never break the JSON: null statistics, counts and findings."""

import math

import orjson
import torch

URL = "/v1/diagnostics"


def test_overflow_to_inf_is_reported_not_crashed(client):
    # NOTES: [[3e38, 3e38]] through Linear(2,2), identity, Linear(2,1), MSE overflows.
    body = {
        "model": {"kind": "mlp", "layer_sizes": [2, 2, 1], "activation": "identity"},
        "input": [[3e38, 3e38]],
        "target": [[0.0]],
        "seed": 0,
    }
    response = client.post(URL, json=body)
    assert response.status_code == 200, response.text
    orjson.loads(response.content)  # strict JSON: no NaN/Infinity literals
    report = response.json()
    assert report["loss"] is None
    assert report["diagnosis"]["verdict"] == "non_finite"
    assert "the loss is NaN or infinite" in report["diagnosis"]["findings"]
    grads = [p["grad"] for p in report["parameters"]]
    assert any(g["nonfinite_count"] > 0 for g in grads)
    assert any(g["mean_abs"] is None for g in grads)
    assert any("NaN/Inf gradients" in f for f in report["diagnosis"]["findings"])

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    loss = torch.nn.MSELoss()(model(torch.tensor([[3e38, 3e38]])), torch.tensor([[0.0]]))
    loss.backward()
    assert not math.isfinite(loss.item())
    for entry, (_, param) in zip(report["parameters"], model.named_parameters(), strict=True):
        expected = int((~torch.isfinite(param.grad)).sum())
        assert entry["grad"]["nonfinite_count"] == expected


def test_dead_relu_layer_is_called_dead(client):
    # All-negative pre-activations: relu passes no gradient to the first layer's weights.
    body = {
        "model": {"kind": "mlp", "layer_sizes": [2, 4, 4, 1], "activation": "relu"},
        "input": [[-1000.0, -1000.0]],
        "target": [[1.0]],
        "seed": 3,
        "thresholds": {"metric": "param_grad"},
    }
    report = client.post(URL, json=body).json()
    verdicts = [layer["verdict"] for layer in report["layers"]]
    zero = [layer["param_grad_mean_abs"] for layer in report["layers"]]
    assert verdicts[0] == "dead", (verdicts, zero)
    assert report["diagnosis"]["verdict"] == "dead"
