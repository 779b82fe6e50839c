"""The committed openapi.json is what the app serves; every operation is documented."""

import json
from pathlib import Path

from service.main import create_app
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parent.parent


def test_committed_openapi_equals_the_served_schema(client):
    committed = json.loads((ROOT / "openapi.json").read_text())
    served = client.get("/openapi.json").json()
    assert served == committed, "openapi.json drifted: run `make openapi` and commit it"


def test_schema_does_not_depend_on_settings():
    small = create_app(make_settings(max_body_bytes=2048, limits={"max_parameters": 5})).openapi()
    assert small == create_app(make_settings()).openapi()


def _schemas_with(node, key):
    """Every schema object under `node` with a property named `key`."""
    if isinstance(node, dict):
        if key in node.get("properties", {}):
            yield node
        for child in node.values():
            yield from _schemas_with(child, key)
    elif isinstance(node, list):
        for child in node:
            yield from _schemas_with(child, key)


def test_seed_maximum_is_the_exact_integer(client):
    served = client.get("/openapi.json").json()
    request = served["components"]["schemas"]["DiagnosticsRequest"]
    # The seeds a request takes (a report's provenance only echoes one, unbounded).
    seeds = [s["properties"]["seed"] for s in _schemas_with(served, "seed")]
    seeds = [seed for seed in seeds if "minimum" in seed]
    assert request["properties"]["seed"] in seeds and len(seeds) >= 5  # request and generators
    for seed in seeds:
        assert type(seed["maximum"]) is int and seed["maximum"] == 2**64 - 1, seed
    # Other integer bounds are integers too (2147483647, not 2147483647.0).
    normal = served["components"]["schemas"]["NormalTensor"]["properties"]["shape"]["items"]
    assert type(normal["maximum"]) is int and type(normal["minimum"]) is int


def test_every_operation_is_documented():
    schema = create_app(make_settings()).openapi()
    operation_ids = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            operation_ids.append(operation["operationId"])
            assert operation.get("description"), f"{method} {path} has no description"
            for status, response in operation["responses"].items():
                if status[0] in "45":
                    assert list(response["content"]) == ["application/problem+json"], (path, status)
                    ref = response["content"]["application/problem+json"]["schema"]["$ref"]
                    assert ref.endswith("/Problem")
            if method == "post":
                assert {"413", "415", "422", "429"} <= set(operation["responses"])
                # Every route that waits for its job may pass its deadline.
                assert ("504" in operation["responses"]) == (path != "/v1/jobs"), path
    assert len(operation_ids) == len(set(operation_ids))
    assert {
        "run_diagnostics",
        "compare_diagnostics",
        "get_capabilities",
        "healthz",
        "readyz",
    } <= set(operation_ids)


def test_capabilities_describe_a_valid_request(client):
    capabilities = client.get("/v1/capabilities").json()
    assert "mlp" in capabilities["model_kinds"]
    assert "gelu_tanh" in capabilities["activations"] and "gelu" in capabilities["activations"]
    assert set(capabilities["losses"]) == {
        "mse",
        "l1",
        "smooth_l1",
        "cross_entropy",
        "bce_with_logits",
        "sum",
    }
    assert capabilities["devices"]["default"] == "cpu"
    assert capabilities["limits"]["max_parameters"] > 0
    assert "mean_abs" in capabilities["statistics"]


def test_capabilities_limits_are_integers(client):
    limits = client.get("/v1/capabilities").json()["limits"]
    assert limits and all(type(value) is int for value in limits.values()), limits


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["device"] == "cpu"


def _without_timing(report: dict) -> dict:
    """A report's numbers: the time it took and where it ran may differ."""
    return {k: v for k, v in report.items() if k not in ("timing_ms", "provenance")}


def test_the_documented_examples_are_what_the_service_answers(client):
    from service.api import examples
    from service.schemas.requests import LESSON_REQUEST
    from tests.test_report_views import LESSON_COMPARE

    lesson = client.post("/v1/diagnostics", json=LESSON_REQUEST).json()
    documented = examples.load("lesson_report")
    assert _without_timing(documented) == _without_timing(lesson)
    assert documented["provenance"]["init_sha256"] == lesson["provenance"]["init_sha256"]
    compare = client.post("/v1/diagnostics/compare?view=summary", json=LESSON_COMPARE).json()
    assert examples.load("lesson_compare_summary") == compare
    bad = {**LESSON_REQUEST, "input": [[1.0, 0.0]]}
    problem = client.post("/v1/diagnostics", json=bad, headers={"X-Request-ID": "example-1"})
    assert examples.load("problem_shape_mismatch") == problem.json()
    # Every error response refers to the one Problem schema and its one example.
    schema = client.get("/openapi.json").json()
    assert schema["components"]["schemas"]["Problem"]["examples"] == [problem.json()]
