"""The playground's files: `/` is its page, kept out of the OpenAPI document, with a policy
that lets it reach only this origin; every file it loads is served and installed."""

import re
import tomllib
from pathlib import Path

from service.api.docs import STATIC_DIR

ROOT = Path(__file__).resolve().parent.parent
PLAYGROUND = STATIC_DIR / "playground"


def test_the_page_is_served_at_the_root(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "img-src 'self' blob:" in policy
    assert "/" not in client.get("/openapi.json").json()["paths"]


def test_every_file_the_page_loads_is_served(client):
    html = client.get("/").text
    loaded = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert "/static/playground/main.js" in loaded
    for module in PLAYGROUND.glob("*.js"):  # the modules main.js imports, and theirs
        loaded += [
            f"/static/playground/{m}" for m in re.findall(r'from "\./([\w.]+)"', module.read_text())
        ]
    for path in set(loaded):
        response = client.get(path)
        assert response.status_code == 200, path
        assert (STATIC_DIR / path.removeprefix("/static/")).is_file()


def test_the_package_installs_the_page():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = package_data["package-data"]["service.api"]
    installed = {file for pattern in patterns for file in STATIC_DIR.parent.glob(pattern)}
    assert set(PLAYGROUND.iterdir()) <= installed
