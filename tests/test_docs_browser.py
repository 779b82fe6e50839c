"""/docs and /redoc render in headless Chromium and load nothing from any other host."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import Traffic
from tests.conftest import LiveServer

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with LiveServer() as server:
        yield server.url


def _render(browser: Any, url: str, ready: str, shot: Path) -> str:
    """Load url, wait for the selector ready, screenshot to shot; return the page's text."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    traffic = Traffic(page)
    try:
        page.goto(url, wait_until="load")
        page.wait_for_selector(ready, timeout=20_000)
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(shot), full_page=False)
        text = page.inner_text("body")
    finally:
        page.close()
    traffic.check()
    assert shot.stat().st_size > 10_000, f"screenshot only {shot.stat().st_size} bytes"
    return text


def test_swagger_ui_renders_offline(browser: Any, base_url: str, artefacts: Path) -> None:
    # Swagger UI ids an operation's block operations-<tag>-<operationId>.
    ready = ".opblock[id$='-run_diagnostics']"
    text = _render(browser, f"{base_url}/docs", ready, artefacts / "docs.png")
    assert "/v1/diagnostics" in text
    assert "gradiag" in text


def test_redoc_renders_offline(browser: Any, base_url: str, artefacts: Path) -> None:
    ready = "[data-section-id$='/run_diagnostics']"  # tag/<tag>/operation/<operationId>
    text = _render(browser, f"{base_url}/redoc", ready, artefacts / "redoc.png")
    assert "/v1/diagnostics" in text
    assert "gradiag" in text
