"""The README's lesson example is the lesson, and its settings table is complete."""

import json
import re
from pathlib import Path

from service.config import Limits, Settings
from service.schemas.requests import LESSON_REQUEST
from tests.conftest import close

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


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
