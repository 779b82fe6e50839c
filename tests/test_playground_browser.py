"""The playground at `/` in headless Chromium: what it shows is what the API answers for the
request it says it made (verdict, a row per layer, the plot), its curl and Python snippets
make that request, and it loads nothing from any other host."""

import ast
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.schemas.requests import LESSON_REQUEST
from tests.browser import Traffic
from tests.conftest import LiveServer

pytestmark = pytest.mark.browser

COMPARE = "/v1/diagnostics/compare"
VARIANTS = {"plain": {"model": {"shortcut": False}}, "shortcut": {"model": {"shortcut": True}}}
PLAIN_LESSON = {**LESSON_REQUEST, "model": {**LESSON_REQUEST["model"], "shortcut": False}}


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with LiveServer() as live:
        yield live


@pytest.fixture
def tab(browser: Any) -> Iterator[Any]:
    """A blank page, allowed the clipboard (the copy buttons)."""
    context = browser.new_context(
        viewport={"width": 1280, "height": 1000}, permissions=["clipboard-read", "clipboard-write"]
    )
    yield context.new_page()
    context.close()


@pytest.fixture
def traffic(tab: Any) -> Iterator[Traffic]:
    """The tab's requests: none may go to another host or fail."""
    record = Traffic(tab)
    yield record
    record.check()


@pytest.fixture
def page(tab: Any, traffic: Traffic, server: LiveServer) -> Iterator[Any]:
    """The playground loaded and its first run (the lesson) shown; no script errors by the
    end of the test."""
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto(f"{server.url}/", wait_until="load")
    wait_for_run(tab, 1)
    yield tab
    assert not errors, errors


def wait_for_run(page: Any, runs: int) -> None:
    """Until the page has shown `runs` answers, or an error (which fails the test)."""
    page.wait_for_function(
        """runs => {
            const root = document.getElementById("playground");
            return root.dataset.state === "error"
                || (root.dataset.state === "ready" && Number(root.dataset.runs) >= runs);
        }""",
        arg=runs,
        timeout=30_000,
    )
    state = page.get_attribute("#playground", "data-state")
    assert state == "ready", page.inner_text("#status")


def api(server: LiveServer, path: str, body: Any, **headers: str) -> httpx.Response:
    response = httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response


def summary(server: LiveServer, body: Any, path: str = "/v1/diagnostics") -> Any:
    return api(server, f"{path}?view=summary", body).json()


def curl_call(page: Any) -> tuple[str, Any]:
    """The URL and JSON body of the curl snippet, as a shell would split it."""
    words = shlex.split(page.inner_text("#curl").replace("\\\n", " "))
    assert words[:4] == ["curl", "-sS", "-X", "POST"], words
    return words[4], json.loads(words[words.index("-d") + 1])


def python_call(page: Any) -> tuple[str, str, Any]:
    """The Python snippet's base URL, method and request (its literal, evaluated)."""
    text = page.inner_text("#python")
    assert text.startswith("from service.client import Client\n"), text
    match = re.search(r'Client\("([^"]+)"\)\.(diagnose|compare)\((.*)\)\nprint', text, re.S)
    assert match, text
    return match[1], match[2], ast.literal_eval(match[3])


def shown_numbers(page: Any) -> list[list[str]]:
    return page.eval_on_selector_all(
        "#layers tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )


def same_number(shown: str, value: float) -> bool:
    """`shown` is `value` to the page's 4 significant digits."""
    return float(shown) == float(f"{value:.4g}")


def assert_shows(page: Any, expected: Any) -> None:
    """The page's verdict and table are the summary `expected`."""
    assert page.inner_text("#verdict .verdict") == expected["diagnosis"]["verdict"]
    rows = shown_numbers(page)
    assert [row[0] for row in rows] == [layer["name"] for layer in expected["layers"]]
    for row, layer in zip(rows, expected["layers"], strict=True):
        assert same_number(row[1], layer["output_grad_mean_abs"]), (row, layer)
        assert same_number(row[2], layer["param_grad_mean_abs"]), (row, layer)
        assert same_number(row[3], layer["relative_to_last"]), (row, layer)
        assert row[4] == layer["verdict"]


def assert_plot(page: Any, traffic: Traffic, url: str) -> None:
    """The plot is the SVG the API answered at `url`, loaded: it has a size."""
    assert traffic.media_types[f"POST {url}"] == "image/svg+xml"
    image = page.locator("#plot-image")
    assert image.is_visible()
    assert image.get_attribute("src").startswith("blob:")
    size = image.evaluate("img => img.complete ? [img.naturalWidth, img.naturalHeight] : [0, 0]")
    assert min(size) > 0, size
    assert page.inner_text("#plot-note") == ""


def test_the_lesson_toggled_both_ways(
    page: Any, traffic: Traffic, server: LiveServer, artefacts: Path
) -> None:
    lesson = summary(server, LESSON_REQUEST)
    plain = summary(server, PLAIN_LESSON)
    assert (lesson["diagnosis"]["verdict"], plain["diagnosis"]["verdict"]) == (
        "healthy",
        "vanishing",
    )

    assert page.is_checked("input[name=preset][value=lesson]")
    assert_shows(page, lesson)
    assert_plot(page, traffic, f"{server.url}/v1/diagnostics")
    assert curl_call(page) == (f"{server.url}/v1/diagnostics?view=summary", LESSON_REQUEST)
    assert python_call(page) == (server.url, "diagnose", LESSON_REQUEST)

    page.uncheck("#shortcut")
    wait_for_run(page, 2)
    assert_shows(page, plain)
    assert_plot(page, traffic, f"{server.url}/v1/diagnostics")
    assert curl_call(page)[1] == PLAIN_LESSON
    assert python_call(page)[2] == PLAIN_LESSON

    page.check("#shortcut")
    wait_for_run(page, 3)
    assert_shows(page, lesson)

    page.click("button[data-copy=curl]")
    page.wait_for_function(
        "() => document.querySelector('[data-copy=curl]').textContent !== 'copy'"
    )
    assert page.evaluate("navigator.clipboard.readText()") == page.inner_text("#curl")

    page.screenshot(path=str(artefacts / "playground.png"), full_page=True)
    assert (artefacts / "playground.png").stat().st_size > 10_000


def test_compare_shortcut_against_plain(
    page: Any, traffic: Traffic, server: LiveServer, artefacts: Path
) -> None:
    page.click("#compare")
    wait_for_run(page, 2)
    assert page.get_attribute("#compare", "aria-pressed") == "true"
    assert page.is_disabled("#shortcut")  # both are run
    body = {"base": LESSON_REQUEST, "variants": VARIANTS}
    assert curl_call(page) == (f"{server.url}{COMPARE}?view=summary", body)
    assert python_call(page) == (server.url, "compare", body)
    expected = summary(server, body, COMPARE)
    for name, run in expected["runs"].items():
        assert (
            page.inner_text(f"#verdict [data-run={name}] .verdict") == run["diagnosis"]["verdict"]
        )
    rows = shown_numbers(page)
    first = [row[1] for row in rows]  # the baseline's (plain) mean |dL/d out| per layer
    for shown, layer in zip(first, expected["runs"]["plain"]["layers"], strict=True):
        assert same_number(shown, layer["output_grad_mean_abs"])
    assert_plot(page, traffic, f"{server.url}{COMPARE}")
    page.screenshot(path=str(artefacts / "playground-compare.png"), full_page=True)


def test_gpt_and_mlp_presets_show_the_api_answer(
    page: Any, traffic: Traffic, server: LiveServer
) -> None:
    page.check("input[name=preset][value=gpt]")
    wait_for_run(page, 2)
    assert page.is_disabled("#activation") and page.is_enabled("#norm")
    page.select_option("#norm", "none")
    wait_for_run(page, 3)
    _, body = curl_call(page)
    assert body["model"]["kind"] == "gpt" and body["model"]["norm"] == "none"
    assert body["loss"] == "cross_entropy"
    assert_shows(page, summary(server, body))
    assert_plot(page, traffic, f"{server.url}/v1/diagnostics")

    page.check("input[name=preset][value=mlp]")
    wait_for_run(page, 4)
    assert page.is_disabled("#norm") and page.is_enabled("#depth")
    page.fill("#depth", "24")
    page.press("#depth", "Tab")  # commits the value (a change event)
    wait_for_run(page, 5)
    page.select_option("#activation", "sigmoid")
    wait_for_run(page, 6)
    _, body = curl_call(page)
    assert body["model"]["layer_sizes"] == [3] * 24 + [1]
    assert body["model"]["activation"] == "sigmoid"
    assert_shows(page, summary(server, body))
    assert page.inner_text("#verdict .verdict") == "vanishing"  # 24 sigmoids, no shortcut


def test_a_key_where_the_server_asks_for_one(browser: Any, live_server: Any) -> None:
    server = live_server(api_keys=["playground-key"])
    page = browser.new_page()
    traffic = Traffic(page)
    page.goto(f"{server.url}/", wait_until="load")
    page.wait_for_selector("#playground[data-state=error]")
    assert "401" in page.inner_text("#status")
    page.fill("#key", "playground-key")
    page.press("#key", "Enter")
    wait_for_run(page, 1)
    assert page.inner_text("#verdict .verdict") == "healthy"
    assert page.evaluate("sessionStorage.getItem('gradiag.apiKey')") == "playground-key"
    # The snippets name the key's variable, never the key.
    assert '-H "Authorization: Bearer $GRADIAG_API_KEY"' in page.inner_text("#curl")
    assert 'api_key=os.environ["GRADIAG_API_KEY"]' in page.inner_text("#python")
    assert "playground-key" not in page.inner_text("#curl") + page.inner_text("#python")
    page.close()
    traffic.check()
