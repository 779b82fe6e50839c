"""The client commands: `gradiag diagnose`, `compare`, `sweep`, `plot`, `capabilities` and
`--version`, in this process (typer's runner) and as real processes, with `--server`
against a live server and with none (the service in the command's own process)."""

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from service.cli import create_cli
from service.schemas.requests import LESSON_REQUEST
from tests.conftest import LiveServer
from tests.processes import free_port
from tests.test_jobs import COMPARE, SWEEP, without_timing

ROOT = Path(__file__).resolve().parent.parent
LESSON = str(ROOT / "docs" / "lesson.json")
# Twelve layers without shortcuts: the first layers' gradients vanish.
DEEP_PLAIN = copy.deepcopy(LESSON_REQUEST)
DEEP_PLAIN["model"].update(shortcut=False, layer_sizes=[3] * 12 + [1])
BAD = copy.deepcopy(LESSON_REQUEST)
BAD["seed"] = -1
# The service in the command's process: on the CPU; no server named.
IN_PROCESS = {"GRADIAG_URL": None, "GRADIAG_DEVICE": "cpu", "GRADIAG_TORCH_THREADS": "1",
              "GRADIAG_GC_FREEZE": "false", "COLUMNS": "120"}  # fmt: skip


@pytest.fixture(scope="module")
def server():
    with LiveServer() as live:
        yield live


def gradiag(*args: str, input: str | None = None, **env: str | None):
    result = CliRunner().invoke(create_cli(), list(args), input=input, env=IN_PROCESS | env)
    assert "Traceback" not in result.output, result.output
    return result


def route(server, path, body=None):
    response = httpx.request("POST" if body else "GET", server.url + path, json=body, timeout=60)
    return response.json()


def write(tmp_path, body) -> str:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(body))
    return str(path)


def test_the_example_file_is_the_lesson():
    assert json.loads(Path(LESSON).read_text()) == LESSON_REQUEST


def test_diagnose_shows_the_diagnosis_then_a_row_per_layer():
    result = gradiag("diagnose", LESSON)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "diagnosis: healthy"
    rows = [
        line.split() for line in lines if line.split()[1:2] and line.split()[1][:7] == "layers."
    ]
    assert [row[1] for row in rows] == [f"layers.{i}" for i in range(5)]
    assert all(row[-1] == "healthy" and "█" in row[-2] for row in rows)
    # The scale spans the thresholds, 0.01x to 100x the last layer: the last layer (ratio 1)
    # sits midway, and every layer of the healthy lesson near it.
    assert rows[-1][3] == "1" and rows[-1][-2] == "█" * 10
    assert all(7 <= len(row[-2]) <= 13 for row in rows)


def test_diagnose_json_is_what_the_route_answers(server):
    result = gradiag("diagnose", LESSON, "--server", server.url, "--json")
    assert result.exit_code == 0, result.output
    expected = route(server, "/v1/diagnostics", LESSON_REQUEST)
    assert without_timing(json.loads(result.stdout)) == without_timing(expected)
    # GRADIAG_URL names the server too; standard input is read for `-`.
    piped = gradiag(
        "diagnose", "-", "--json", input=json.dumps(LESSON_REQUEST), GRADIAG_URL=server.url
    )
    assert without_timing(json.loads(piped.stdout)) == without_timing(expected)


def test_a_verdict_in_fail_on_exits_1(server, tmp_path):
    deep = write(tmp_path, DEEP_PLAIN)
    failed = gradiag("diagnose", deep, "--server", server.url)
    assert failed.exit_code == 1
    assert failed.stdout.startswith("diagnosis: vanishing")
    assert failed.stderr == "gradiag: vanishing (--fail-on non_finite,exploding,vanishing)\n"
    for fail_on in ("none", "exploding,nonfinite", "non-finite,dead"):
        assert (
            gradiag("diagnose", deep, "--server", server.url, "--fail-on", fail_on).exit_code == 0
        )
    unknown = gradiag("diagnose", deep, "--fail-on", "sad")
    assert unknown.exit_code == 2 and "unknown verdict sad" in unknown.output


def test_errors_print_title_location_and_detail_without_a_traceback(server, tmp_path):
    refused = gradiag("diagnose", write(tmp_path, BAD), "--server", server.url)
    assert refused.exit_code == 2
    assert refused.stderr.splitlines()[:2] == [
        "error: Invalid request (422 invalid_request)",
        "  seed: Input should be greater than or equal to 0",
    ]
    # A sweep goes as a job: the location is still the file's.
    sweep = gradiag(
        "sweep", write(tmp_path, {"base": LESSON_REQUEST, "axes": []}), "--server", server.url
    )
    assert sweep.exit_code == 2 and "  axes: List should have at least 1 item" in sweep.stderr
    missing = gradiag("diagnose", str(tmp_path / "missing.json"))
    assert missing.exit_code == 2 and "cannot read" in missing.stderr
    (tmp_path / "broken.json").write_text("{")
    broken = gradiag("diagnose", str(tmp_path / "broken.json"))
    assert broken.exit_code == 2 and "is not JSON" in broken.stderr
    nobody = gradiag("capabilities", "--server", f"http://127.0.0.1:{free_port()}")
    assert nobody.exit_code == 3 and "cannot reach" in nobody.stderr


def test_compare_shows_the_variants_side_by_side(server, tmp_path):
    request = write(tmp_path, COMPARE)
    result = gradiag("compare", request, "--server", server.url, "--fail-on", "none")
    assert result.exit_code == 0, result.output
    ratios = route(server, "/v1/diagnostics/compare", COMPARE)["ratios"]["layers"]
    header = next(line for line in result.stdout.splitlines() if "layer" in line)
    assert header.split() == ["layer", "plain", "shortcut", "÷", "plain"]
    first = next(line for line in result.stdout.splitlines() if "layers.0" in line)
    assert first.split()[-1] == f"{ratios['layers.0']['shortcut']:.3g}"
    # The plain variant vanishes: with the default --fail-on, exit 1.
    assert gradiag("compare", request, "--server", server.url).exit_code == 1


def test_sweep_runs_as_a_job_with_a_progress_bar(server, tmp_path):
    request = write(tmp_path, SWEEP)
    result = gradiag(
        "sweep", request, "--server", server.url, "--fail-on", "none", TTY_COMPATIBLE="1"
    )
    assert result.exit_code == 0, result.output
    assert "6/6" in result.stderr  # the bar, drawn on a terminal's standard error
    table = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)  # coloured, as on a terminal
    runs = [
        line for line in table.splitlines() if line.split()[-1:] in (["healthy"], ["vanishing"])
    ]
    assert len(runs) == 6
    assert "across seeds" in table
    as_json = gradiag("sweep", request, "--server", server.url, "--json", "--fail-on", "none")
    assert json.loads(as_json.stdout) == route(server, "/v1/sweeps", SWEEP)


def test_capabilities_and_version(server):
    table = gradiag("capabilities", "--server", server.url)
    assert table.exit_code == 0 and "model kinds" in table.stdout
    as_json = gradiag("capabilities", "--server", server.url, "--json")
    assert json.loads(as_json.stdout) == route(server, "/v1/capabilities")
    version = gradiag("--version")
    assert version.exit_code == 0 and version.stdout == "gradiag 0.1.0\n"


def test_plot_writes_svg_and_png_against_a_server_and_in_process(server, tmp_path):
    image = tmp_path / "lesson.svg"
    result = gradiag("plot", LESSON, "-o", str(image), "--server", server.url)
    assert result.exit_code == 0, result.output
    root = ElementTree.fromstring(image.read_bytes())
    assert root.tag.endswith("svg")
    picture = tmp_path / "lesson.png"
    assert gradiag("plot", LESSON, "-o", str(picture)).exit_code == 0  # in-process
    assert Image.open(picture).size[0] > 0
    wrong = gradiag("plot", LESSON, "-o", str(tmp_path / "lesson.gif"))
    assert wrong.exit_code == 2 and ".svg or .png" in wrong.output


def test_gradiag_diagnose_as_a_process_with_and_without_a_server(server):
    command = [sys.executable, "-m", "service.cli", "diagnose", "docs/lesson.json"]
    env = {k: v for k, v in {**os.environ, **IN_PROCESS}.items() if v is not None}
    for extra in ([], ["--server", server.url]):
        done = subprocess.run(
            [*command, *extra], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("diagnosis: healthy")
        assert done.stdout.count(" healthy") == 5 + 1
    refused = subprocess.run(
        [*command[:-1], "-", "--server", server.url],
        input=json.dumps(BAD),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("error: Invalid request (422 invalid_request)")
