"""/docs and /redoc render in headless Chromium and load nothing from any other host."""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.browser

playwright_sync = pytest.importorskip("playwright.sync_api")

LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with LiveServer() as server:
        yield server.url


@pytest.fixture(scope="module")
def browser() -> Iterator["playwright_sync.Browser"]:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium not installed (CI installs it via apt)")
        pytest.skip("chromium not installed")
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=LAUNCH_ARGS)
        yield b
        b.close()


def _local(url: str) -> bool:
    return url.startswith(("data:", "blob:")) or urlsplit(url).hostname == "127.0.0.1"


def _render(browser: "playwright_sync.Browser", url: str, ready: str, shot: Path) -> str:
    """Load url, wait for the selector ready, screenshot to shot; return the page's text."""
    requests: list[str] = []
    external: list[str] = []
    failed: list[str] = []
    page = browser.new_page(viewport={"width": 1280, "height": 900})

    def route(r: "playwright_sync.Route") -> None:
        if _local(r.request.url):
            r.continue_()
        else:
            external.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("request", lambda r: requests.append(r.url))
    page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}"))
    try:
        page.goto(url, wait_until="load")
        page.wait_for_selector(ready, timeout=20_000)
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(shot), full_page=False)
        text = page.inner_text("body")
    finally:
        page.close()
    assert not external, f"requests to other hosts: {external}"
    assert all(_local(u) for u in requests), requests
    assert not failed, f"failed requests: {failed}"
    assert shot.stat().st_size > 10_000, f"screenshot only {shot.stat().st_size} bytes"
    return text


def test_swagger_ui_renders_offline(
    browser: "playwright_sync.Browser", base_url: str, tmp_path: Path
) -> None:
    # Swagger UI ids an operation's block operations-<tag>-<operationId>.
    ready = ".opblock[id$='-run_diagnostics']"
    text = _render(browser, f"{base_url}/docs", ready, tmp_path / "docs.png")
    assert "/v1/diagnostics" in text
    assert "gradiag" in text


def test_redoc_renders_offline(
    browser: "playwright_sync.Browser", base_url: str, tmp_path: Path
) -> None:
    ready = "[data-section-id$='/run_diagnostics']"  # tag/<tag>/operation/<operationId>
    text = _render(browser, f"{base_url}/redoc", ready, tmp_path / "redoc.png")
    assert "/v1/diagnostics" in text
    assert "gradiag" in text
