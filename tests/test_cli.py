"""`gradiag openapi` prints the schema; `gradiag serve` serves the lesson over real HTTP."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.schemas.requests import LESSON_REQUEST
from tests.test_lesson import WITH_SHORTCUT

ROOT = Path(__file__).resolve().parent.parent
GRADIAG = [sys.executable, "-m", "service.cli"]


def test_openapi_command_prints_the_committed_schema():
    result = subprocess.run(
        [*GRADIAG, "openapi"], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert json.loads(result.stdout) == json.loads((ROOT / "openapi.json").read_text())


def test_openapi_command_into_a_closed_pipe_exits_quietly():
    # `gradiag openapi | head`: the schema is larger than a pipe's buffer, so writes fail.
    process = subprocess.Popen(
        [*GRADIAG, "openapi"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, cwd=ROOT
    )
    assert process.stdout is not None
    assert process.stdout.read(16)
    process.stdout.close()
    _, stderr = process.communicate(timeout=120)
    assert b"Traceback" not in stderr and b"BrokenPipeError" not in stderr, stderr.decode()
    assert process.returncode == 1


def test_serve_command_answers_the_lesson():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "GRADIAG_DEVICE": "cpu", "GRADIAG_DRAIN_S": "0"}
    process = subprocess.Popen(
        [*GRADIAG, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "gradiag serve did not become ready"
            time.sleep(0.1)
        report = httpx.post(f"{url}/v1/diagnostics", json=LESSON_REQUEST).json()
        grads = {p["name"]: p["grad"]["mean_abs"] for p in report["parameters"]}
        for name, value in WITH_SHORTCUT.items():
            assert abs(grads[name] - value) <= 1e-5 * value
    finally:
        process.terminate()
        # No drain (tests/test_shutdown.py has it): a graceful shutdown, and exit 0.
        assert process.wait(timeout=30) == 0
