"""The README's lesson example is the lesson, its settings table is complete, its ResNet and
through-time tables are what the service answers, and every JSON example (README,
docs/architectures.md, docs/analyses.md) is a valid request."""

import json
import re
from pathlib import Path

from service.config import Limits, Settings
from service.schemas.requests import LESSON_REQUEST
from tests.conftest import close

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
EXAMPLES = "".join(
    (ROOT / "docs" / name).read_text() for name in ("architectures.md", "analyses.md")
)


def test_curl_example_posts_the_lesson_request(client):
    block = README.split("<!-- lesson-curl -->", 1)[1].split("```", 2)[1]
    body = json.loads(re.search(r"-d '(\{.*?\})'", block, re.S).group(1))
    assert body == LESSON_REQUEST
    printed = README.split("prints the lesson's numbers", 1)[1].split("```", 2)[1]
    *weights, verdict = printed.strip().splitlines()
    report = client.post("/v1/diagnostics", json=body).json()
    served = [
        (p["name"], p["grad"]["mean_abs"]) for p in report["parameters"] if "weight" in p["name"]
    ]
    assert [line.split()[0] for line in weights] == [name for name, _ in served]
    for line, (_, value) in zip(weights, served, strict=True):
        assert close(float(line.split()[1]), value, rel=1e-6)
    assert verdict == f"verdict: {report['diagnosis']['verdict']}"


def test_every_setting_is_documented():
    names = [n for n in Settings.model_fields if n != "limits"] + list(Limits.model_fields)
    for name in names:
        assert f"`GRADIAG_{name.upper()}`" in README, name


def test_every_json_example_is_a_valid_request(client):
    blocks = re.findall(r"```json\n(.*?)```", README + EXAMPLES, re.S)
    assert len(blocks) >= 4
    for block in blocks:
        body = json.loads(block)
        if "axes" in body:
            response = client.post("/v1/sweeps", json=body)
        elif body["model"].get("preset") == "gpt2-small":
            # The full model takes seconds; the same request on fewer blocks proves the shape.
            body["model"]["n_layers"] = 1
            response = client.post("/v1/diagnostics", json=body)
        else:
            response = client.post("/v1/diagnostics", json=body)
        assert response.status_code == 200, (block, response.text[:400])


def test_the_quick_start_python_runs_against_a_live_server(live_server, capsys):
    server = live_server()
    block = re.search(r"```python\n(.*?)```", README, re.S)
    assert block is not None
    code = block.group(1).replace("http://127.0.0.1:8000", server.url)
    exec(code.replace('"docs/lesson.json"', repr(str(ROOT / "docs" / "lesson.json"))), {})
    assert capsys.readouterr().out.strip() == "healthy"


def _table(heading: str) -> list[list[str]]:
    """The rows of the first table after `heading`, as cells, header and rule left out."""
    section = README.split(heading, 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    first = section.splitlines().index(rows[0])
    table = []
    for line in section.splitlines()[first:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split("|")])
    return table[2:]


def test_the_resnet_table_is_what_the_service_answers(client):
    for norm, with_shortcut, without, verdict in _table("## The lesson on a real CNN: ResNet"):
        for shortcut, expected in ((True, with_shortcut), (False, without)):
            body = {
                "model": {"kind": "resnet", "preset": "resnet18", "num_classes": 10,
                          "shortcut": shortcut, "norm": norm},
                "input": {"shape": [8, 3, 64, 64], "distribution": "normal", "seed": 0},
                "target": {"shape": [8], "distribution": "randint", "high": 10, "seed": 0},
                "loss": "cross_entropy", "seed": 0,
            }  # fmt: skip
            report = client.post("/v1/diagnostics", json=body).json()
            assert close(report["diagnosis"]["first_to_last_ratio"], float(expected), rel=5e-3)
            assert report["diagnosis"]["verdict"] == verdict


def test_the_through_time_table_is_what_the_service_answers(client):
    types = {"tanh RNN": "rnn", "LSTM": "lstm", "GRU": "gru"}
    for name, *norms, above in _table("## The second act: gradient through time"):
        body = {
            "model": {"kind": "sequential", "layers": [
                {"type": types[name], "hidden_size": 32, "output": "last"},
                {"type": "linear", "out_features": 1}]},
            "input": {"shape": [4, 200, 8], "distribution": "normal", "seed": 0},
            "target": {"shape": [4, 1], "distribution": "normal", "seed": 1},
            "loss": "mse", "seed": 0, "dtype": "float64",
        }  # fmt: skip
        series = client.post("/v1/diagnostics", json=body).json()["through_time"][0]["series"][0]
        for step, expected in zip((199, 0), norms, strict=True):
            assert close(series["grad_norms"][step], float(expected), rel=6e-2, abs_=0), (
                name,
                step,
            )
        assert series["horizon"] == int(above)


def test_the_analyses_example_answers_every_section(client):
    """docs/analyses.md's request: per-sample statistics, curvature and the precision check on
    the course GPT, in one report."""
    docs = (ROOT / "docs" / "analyses.md").read_text()
    body = json.loads(re.search(r"```json\n(.*?)```", docs, re.S).group(1))
    report = client.post("/v1/diagnostics", json=body).json()
    assert {"per_sample", "curvature", "precision"} <= set(report)
    assert {"noise", "alignment", "sample_grad_norms"} <= set(report["per_sample"])
    assert all("per_sample" in p for p in report["parameters"])
    assert len(report["curvature"]["top_eigenvalues"]) == 3
    assert report["curvature"]["per_layer"] and report["precision"]["parameters"]
    assert {"per_sample", "curvature", "precision"} <= set(report["timing_ms"])
