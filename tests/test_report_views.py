"""Reports read summary first: the diagnosis, then layers, then parameters; `?view=summary`
answers only the diagnosis and a row per layer."""

from service.schemas.requests import LESSON_REQUEST

URL = "/v1/diagnostics"
LESSON_COMPARE = {
    "base": LESSON_REQUEST,
    "variants": {
        "plain": {"model": {"shortcut": False}},
        "shortcut": {"model": {"shortcut": True}},
    },
}


def test_the_diagnosis_comes_first_then_layers_then_parameters(client):
    report = client.post(URL, json=LESSON_REQUEST).json()
    keys = list(report)
    assert keys[0] == "diagnosis"
    assert keys.index("layers") < keys.index("parameters")


def test_the_summary_view_is_the_diagnosis_and_a_row_per_layer(client):
    full = client.post(URL, json=LESSON_REQUEST).json()
    response = client.post(URL, params={"view": "summary"}, json=LESSON_REQUEST)
    assert response.status_code == 200
    summary = response.json()
    assert list(summary) == ["diagnosis", "loss", "layers"]
    assert summary["diagnosis"] == full["diagnosis"] and summary["loss"] == full["loss"]
    assert [row["name"] for row in summary["layers"]] == [layer["name"] for layer in full["layers"]]
    for row, layer in zip(summary["layers"], full["layers"], strict=True):
        assert row["output_grad_mean_abs"] == layer["output_grad"]["mean_abs"]
        assert row["relative_to_last"] == layer["relative_to_last"]
        assert row["verdict"] == layer["verdict"]
    assert len(response.content) < 1500 < len(client.post(URL, json=LESSON_REQUEST).content)


def test_the_summary_view_of_a_compare_summarises_each_run(client):
    full = client.post(f"{URL}/compare", json=LESSON_COMPARE).json()
    summary = client.post(f"{URL}/compare?view=summary", json=LESSON_COMPARE).json()
    assert summary["ratios"] == full["ratios"] and summary["baseline"] == "plain"
    for name, run in summary["runs"].items():
        assert run["diagnosis"] == full["runs"][name]["diagnosis"]
        assert len(run["layers"]) == len(full["runs"][name]["layers"])


def test_an_unknown_view_is_a_located_422(client):
    response = client.post(URL, params={"view": "everything"}, json=LESSON_REQUEST)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["query", "view"]


def test_a_compare_built_from_models_patches_its_base(client):
    from service.client.local import LocalClient
    from service.schemas.requests import CompareRequest, DiagnosticsRequest
    from tests.conftest import make_settings

    request = CompareRequest(
        base=DiagnosticsRequest.model_validate(LESSON_REQUEST),
        variants={"plain": {"model": {"shortcut": False}}, "shortcut": {}},
    )
    assert request.base_document["model"]["shortcut"] is True
    with LocalClient(make_settings()) as local:
        report = local.compare(request)
    expected = client.post(f"{URL}/compare", json=LESSON_COMPARE).json()
    assert report["ratios"] == expected["ratios"]
