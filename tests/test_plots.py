"""Gradient-flow charts: `Accept: image/svg+xml` or `image/png` on the report routes. The
SVG's titles are the report's numbers, the markers sit where those numbers are on the log
axis, the axis spans data and thresholds, and the same report gives the same bytes."""

import copy
import io
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

from service.api.negotiation import choose
from service.plots import render
from service.plots.layers import compare_chart, diagnosis_chart, layer_max, layer_mean, reference
from service.plots.sweep import sweep_chart
from service.schemas.jobs import CompareJob, DiagnosticsJob, SweepJob
from service.schemas.requests import LESSON_REQUEST, Thresholds
from tests.conftest import close

ROOT = Path(__file__).resolve().parent.parent
NS = {"svg": "http://www.w3.org/2000/svg"}
SVG_TYPE, PNG_TYPE = "image/svg+xml", "image/png"
PLAIN = {**LESSON_REQUEST, "model": {**LESSON_REQUEST["model"], "shortcut": False}}
COMPARE = {
    "base": LESSON_REQUEST,
    "variants": {
        "plain": {"model": {"shortcut": False}},
        "shortcut": {"model": {"shortcut": True}},
    },
}
SWEEP = {
    "base": PLAIN,
    "axes": [
        {"path": "model.layer_sizes", "values": [[3, 3, 1], [3, 3, 3, 3, 3, 1], [3] * 9 + [1]]},
        {"path": "seed", "values": [1, 2, 3]},
    ],
}
DEFAULT = Thresholds()


@pytest.fixture(scope="module")
def reports(client):
    answers = {
        "diagnosis": client.post("/v1/diagnostics", json=PLAIN),
        "compare": client.post("/v1/diagnostics/compare", json=COMPARE),
        "sweep": client.post("/v1/sweeps", json=SWEEP),
    }
    for response in answers.values():
        assert response.status_code == 200, response.text[:400]
    return {name: response.json() for name, response in answers.items()}


def post_image(client, route: str, body: dict, accept: str = SVG_TYPE):
    response = client.post(route, json=body, headers={"accept": accept})
    assert response.status_code == 200, response.text[:400]
    assert response.headers["content-type"] == accept
    assert response.headers["vary"] == "Accept"
    return response.content


def marks(svg: bytes) -> dict[str, list[tuple[float, str]]]:
    """gid -> (y, title) of each marker in that group, in order (y grows downwards)."""
    root = ET.fromstring(svg)
    found = {}
    for group in root.iter(f"{{{NS['svg']}}}g"):
        uses = [u for u in group.iter(f"{{{NS['svg']}}}use") if u.find("svg:title", NS) is not None]
        if group.get("id") and uses and group.find("svg:title", NS) is None:
            found[group.get("id")] = [
                (float(u.get("y")), u.find("svg:title", NS).text) for u in uses
            ]
    return {gid: found[gid] for gid in found if not gid.startswith(("figure", "axes"))}


def line(svg: bytes, gid: str) -> tuple[float, str]:
    """The y of a horizontal threshold line and its title."""
    root = ET.fromstring(svg)
    group = next(g for g in root.iter(f"{{{NS['svg']}}}g") if g.get("id") == gid)
    d = group.find(".//svg:path", NS).get("d")
    ys = {float(y) for y in re.findall(r"[ML] [-\d.]+ ([-\d.]+)", d)}
    assert len(ys) == 1, d
    return ys.pop(), group.find("svg:title", NS).text


def assert_log_placed(points: list[tuple[float, float]]) -> None:
    """Each (value, y) lies on one line y = a + b·log10(value), b < 0: the markers are drawn
    at their values on the log axis (SVG coordinates have 6 decimals)."""
    (v0, y0), (v1, y1) = min(points), max(points)
    slope = (y1 - y0) / (math.log10(v1) - math.log10(v0))
    assert slope < 0
    for value, y in points:
        assert abs(y0 + slope * (math.log10(value) - math.log10(v0)) - y) < 1e-3, (value, y)


def test_diagnosis_titles_are_the_report_numbers_where_drawn(client, reports):
    report = reports["diagnosis"]
    svg = post_image(client, "/v1/diagnostics", PLAIN)
    drawn = marks(svg)
    layers = report["layers"]
    means, maxima = drawn["mean"], drawn["max"]
    assert len(means) == len(maxima) == len(layers) == 5
    placed = []
    for layer, (y_mean, mean_title), (y_max, max_title) in zip(layers, means, maxima, strict=True):
        mean, peak = layer["output_grad"]["mean_abs"], layer["output_grad"]["max_abs"]
        assert mean_title.startswith(f"{layer['name']} (layer {layer['index']}):")
        assert f"mean |dL/d(output)| {mean!r};" in mean_title
        assert f"{layer['relative_to_last']!r}× the last layer's; {layer['verdict']}" in mean_title
        assert f"max |dL/d(output)| {peak!r}" in max_title
        placed += [(mean, y_mean), (peak, y_max)]
    ref = layers[-1]["output_grad"]["mean_abs"]
    for kind, factor in (("vanishing", 0.01), ("exploding", 100.0)):
        y, title = line(svg, kind)
        assert f"threshold {factor * ref!r} = {factor!r} × the last layer's {ref!r}" in title
        placed.append((factor * ref, y))
    assert_log_placed(placed)
    assert drawn.get("missing", []) == []


def test_compare_overlays_the_variants_with_the_report_numbers(client, reports):
    report = reports["compare"]
    drawn = marks(post_image(client, "/v1/diagnostics/compare", COMPARE))
    placed = []
    for variant, run in report["runs"].items():
        assert len(drawn[f"mean-{variant}"]) == len(run["layers"])
        for layer, (y, title) in zip(run["layers"], drawn[f"mean-{variant}"], strict=True):
            value = layer["output_grad"]["mean_abs"]
            assert title.startswith(f"{variant}: {layer['name']} ")
            assert f" {value!r};" in title and layer["verdict"] in title
            placed.append((value, y))
    assert "max-plain" not in drawn  # the overlay draws the verdict's metric only
    assert_log_placed(placed)


def test_the_lessons_plain_layers_that_vanish_are_drawn_below_its_threshold(client, reports):
    report = reports["compare"]
    svg = post_image(client, "/v1/diagnostics/compare", COMPARE)
    drawn = marks(svg)
    verdicts = {}
    for variant, run in report["runs"].items():
        threshold_y, title = line(svg, f"vanishing-{variant}")
        ref = run["layers"][-1]["output_grad"]["mean_abs"]
        assert f"{0.01 * ref!r}" in title
        for layer, (y, _) in zip(run["layers"], drawn[f"mean-{variant}"], strict=True):
            verdicts[(variant, layer["name"])] = layer["verdict"]
            assert (y > threshold_y) == (layer["verdict"] == "vanishing"), (variant, layer)
    assert verdicts[("plain", "layers.0")] == "vanishing"  # the lesson's point
    assert all(v == "healthy" for (variant, _), v in verdicts.items() if variant == "shortcut")


def test_sweep_draws_mean_and_std_across_seeds_by_the_swept_axis(client, reports):
    report = reports["sweep"]
    svg = post_image(client, "/v1/sweeps", SWEEP)
    drawn = marks(svg)
    groups = report["across_seeds"]
    assert len(groups) == 3 and list(drawn) == ["ratio-0"]  # one series: seed is the spread
    placed = []
    for group, (y, title) in zip(groups, drawn["ratio-0"], strict=True):
        ratio = group["first_to_last_ratio"]
        sizes = "[" + ",".join(map(str, group["axes"]["model.layer_sizes"])) + "]"
        assert title.startswith(f"across seeds; model.layer_sizes = {sizes}:")
        assert f"mean {ratio['mean']!r} ± std {ratio['std']!r} across 3 seeds" in title
        placed.append((ratio["mean"], y))
    for kind, value in (("vanishing", 0.01), ("exploding", 100.0)):
        y, title = line(svg, kind)
        assert title.endswith(repr(value))
        placed.append((value, y))
    assert_log_placed(placed)


def test_sweep_without_a_seed_axis_draws_each_run(client):
    body = {"base": LESSON_REQUEST, "axes": [{"path": "model.shortcut", "values": [False, True]}]}
    report = client.post("/v1/sweeps", json=body).json()
    drawn = marks(post_image(client, "/v1/sweeps", body))
    titles = [title for _, title in drawn["ratio-0"]]
    assert len(titles) == 2
    for run, title in zip(report["runs"], titles, strict=True):
        assert f"ratio {run['first_to_last_ratio']!r}; {run['verdict']}" in title


def spans(limits: tuple[float, float], values: list[float]) -> bool:
    return limits[0] < min(values) and max(values) < limits[1]


def test_the_log_axis_spans_data_and_thresholds(reports):
    diagnosis = reports["diagnosis"]
    axes = diagnosis_chart(diagnosis, DEFAULT).figure.axes[0]
    ref = reference(diagnosis)
    values = [layer_mean(diagnosis, layer) for layer in diagnosis["layers"]]
    values += [layer_max(diagnosis, layer) for layer in diagnosis["layers"]]
    assert axes.get_yscale() == "log"
    assert spans(axes.get_ylim(), [*values, 0.01 * ref, 100 * ref])

    compare = reports["compare"]
    axes = compare_chart(compare, {"plain": DEFAULT, "shortcut": DEFAULT}).figure.axes[0]
    values = [layer_mean(run, layer) for run in compare["runs"].values() for layer in run["layers"]]
    refs = [reference(run) for run in compare["runs"].values()]
    # The shortcut's exploding line (100x its last layer) is above all data: still shown.
    assert spans(axes.get_ylim(), [*values, *(0.01 * r for r in refs), *(100 * r for r in refs)])

    sweep = reports["sweep"]
    axes = sweep_chart(sweep, DEFAULT).figure.axes[0]
    means = [group["first_to_last_ratio"]["mean"] for group in sweep["across_seeds"]]
    assert min(means) < 1e-4  # the deepest plain network vanishes...
    assert spans(axes.get_ylim(), [*means, 0.01, 100.0])  # ...and is on the chart


def test_a_tiny_gradient_stretches_the_axis_rather_than_leaving_it(reports):
    report = copy.deepcopy(reports["diagnosis"])
    report["layers"][0]["output_grad"]["mean_abs"] = 1e-30
    report["layers"][0]["output_grad"]["max_abs"] = 2e-30
    low, high = diagnosis_chart(report, DEFAULT).figure.axes[0].get_ylim()
    assert low < 1e-30 and high > 100 * reference(report)


def test_null_and_zero_gradients_are_marked_apart(reports):
    report = copy.deepcopy(reports["diagnosis"])
    report["layers"][1]["output_grad"] = None
    report["layers"][2]["output_grad"]["mean_abs"] = 0.0
    job = DiagnosticsJob(kind="diagnostics", request=PLAIN)
    drawn = marks(render(job, report, "svg"))
    assert [title.split(" (")[0] for _, title in drawn["mean"]] == [
        "layers.0",
        "layers.3",
        "layers.4",
    ]
    missing = [title for _, title in drawn["missing"]]
    assert len(missing) == 2
    assert "| null (not on a log axis: NaN, infinite or no gradient)" in missing[0]
    assert "| 0.0 (not on a log axis: no gradient flows)" in missing[1]


def test_thresholds_come_from_the_request(client, reports):
    body = {**PLAIN, "thresholds": {"vanishing": 0.001, "exploding": 10}}
    svg = post_image(client, "/v1/diagnostics", body)
    ref = reports["diagnosis"]["layers"][-1]["output_grad"]["mean_abs"]
    assert f"threshold {0.001 * ref!r} = 0.001 ×" in line(svg, "vanishing")[1]
    compare = {
        **COMPARE,
        "variants": {
            **COMPARE["variants"],
            "shortcut": {"model": {"shortcut": True}, "thresholds": {"vanishing": 0.5}},
        },
    }
    svg = post_image(client, "/v1/diagnostics/compare", compare)
    assert "= 0.5 ×" in line(svg, "vanishing-shortcut")[1]
    assert "= 0.01 ×" in line(svg, "vanishing-plain")[1]


def test_png_is_a_png_of_the_fixed_size(client):
    png = post_image(client, "/v1/diagnostics/compare", COMPARE, PNG_TYPE)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        assert image.size == (800, 480)


@pytest.mark.parametrize("image", ["svg", "png"])
def test_the_same_report_gives_the_same_bytes(reports, image):
    jobs = {
        "diagnosis": DiagnosticsJob(kind="diagnostics", request=PLAIN),
        "compare": CompareJob(kind="compare", request=COMPARE),
        "sweep": SweepJob(kind="sweep", request=SWEEP),
    }
    for name, job in jobs.items():
        first = render(job, reports[name], image)
        assert render(job, copy.deepcopy(reports[name]), image) == first, name


def test_two_runs_of_one_request_give_the_same_svg(client):
    # Timing differs between the runs; the chart shows none of it.
    assert post_image(client, "/v1/diagnostics", PLAIN) == post_image(
        client, "/v1/diagnostics", PLAIN
    )


JSON_TYPE = "application/json"


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, JSON_TYPE),
        ("", JSON_TYPE),
        ("*/*", JSON_TYPE),
        ("application/json", JSON_TYPE),
        ("image/svg+xml", SVG_TYPE),
        ("IMAGE/PNG", PNG_TYPE),
        ("image/*", SVG_TYPE),
        ("image/*, image/svg+xml;q=0.1", PNG_TYPE),  # the more specific range's q counts
        ("application/json, image/svg+xml", JSON_TYPE),  # a tie: JSON
        ("application/json;q=0.4, image/png;q=0.5", PNG_TYPE),
        ("text/html, application/xhtml+xml, */*;q=0.8", JSON_TYPE),  # a browser
        ("image/png;q=0, */*;q=0.1", JSON_TYPE),
        ("*/*;q=0.1, application/json;q=0", SVG_TYPE),
        ("image/png; q=0.9; level=1, application/json; q=0.5", PNG_TYPE),
        ("image/png;q=2, application/json;q=0.1", JSON_TYPE),  # an invalid q: skipped
        ("text/html", None),
        ("application/json;q=0, image/*;q=0", None),
        ("application/problem+json", None),
    ],
)
def test_accept_chooses_by_quality_then_json(accept, chosen):
    assert choose(accept) == chosen


@pytest.mark.parametrize(
    ("accept", "media"),
    [("*/*", JSON_TYPE), ("image/png;q=0.9, image/svg+xml;q=0.8", PNG_TYPE)],
)
def test_routes_negotiate(client, accept, media):
    response = client.post("/v1/diagnostics", json=PLAIN, headers={"accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"] == media and response.headers["vary"] == "Accept"


@pytest.mark.parametrize("route", ["/v1/diagnostics", "/v1/diagnostics/compare", "/v1/sweeps"])
def test_unacceptable_accept_is_406_before_running(client, route):
    body = {"/v1/diagnostics": PLAIN, "/v1/diagnostics/compare": COMPARE}.get(route, SWEEP)
    response = client.post(route, json=body, headers={"accept": "text/html"})
    assert response.status_code == 406
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "not_acceptable"
    assert response.headers["vary"] == "Accept"
    # Before anything runs or is checked: a body whose shapes do not fit is still a 406.
    misfit = {**PLAIN, "input": [[1.0, 2.0]]} if route == "/v1/diagnostics" else body
    assert client.post(route, json=misfit, headers={"accept": "text/html"}).status_code == 406


def test_respond_async_answers_the_job_as_json_whatever_the_accept(client):
    response = client.post(
        "/v1/diagnostics", json=PLAIN, headers={"accept": PNG_TYPE, "prefer": "respond-async"}
    )
    assert response.status_code == 202 and response.headers["content-type"] == JSON_TYPE
    assert response.json()["kind"] == "diagnostics"


def test_openapi_documents_the_charts_and_406(client):
    paths = client.get("/openapi.json").json()["paths"]
    for route in ("/v1/diagnostics", "/v1/diagnostics/compare", "/v1/sweeps"):
        responses = paths[route]["post"]["responses"]
        assert {JSON_TYPE, SVG_TYPE, PNG_TYPE} == set(responses["200"]["content"])
        assert "not_acceptable" in responses["406"]["description"]


def test_the_committed_lesson_figure_is_the_lessons_compare(reports):
    svg = (ROOT / "docs" / "lesson.svg").read_bytes()
    drawn = marks(svg)
    for variant, run in reports["compare"]["runs"].items():
        shown = [
            float(re.search(r"\| ([-\d.e]+);", title).group(1))
            for _, title in drawn[f"mean-{variant}"]
        ]
        served = [layer["output_grad"]["mean_abs"] for layer in run["layers"]]
        assert len(shown) == len(served)
        assert all(close(a, b, rel=1e-6) for a, b in zip(shown, served, strict=True)), variant
