"""The README's lesson example is the lesson, its settings table is complete, and every JSON
example (README and docs/architectures.md) is a valid request."""

import json
import re
from pathlib import Path

from service.config import Limits, Settings
from service.schemas.requests import LESSON_REQUEST
from tests.conftest import close

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
EXAMPLES = (ROOT / "docs" / "architectures.md").read_text()


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
