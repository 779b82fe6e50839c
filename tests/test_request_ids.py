"""Request ids (X-Request-ID echoed, generated, in every problem body and log line), JSON
access logs, and an unexpected exception answered as a 500 problem on a connection that
stays usable."""

import http.client
import io
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.responses import StreamingResponse

from service import logs
from service.main import create_app
from service.schemas.requests import LESSON_REQUEST
from tests.conftest import make_settings
from tests.processes import Serve, free_port

ROOT = Path(__file__).resolve().parent.parent
URL = "/v1/diagnostics"
JSON = {"content-type": "application/json"}
GENERATED = re.compile(r"[0-9a-f]{32}")


def test_a_sane_request_id_is_echoed(client):
    given = "client-42.retry:1_A"
    response = client.get("/healthz", headers={"X-Request-ID": given})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == given


@pytest.mark.parametrize(
    "given", [None, "", "a" * 129, "has space", 'quote"d', "semi;colon", "\u00e9t\u00e9"]
)
def test_an_id_is_generated_when_absent_or_malformed(client, given):
    headers = {} if given is None else {"X-Request-ID": given.encode("latin-1")}
    first = client.get("/healthz", headers=headers).headers["x-request-id"]
    second = client.get("/healthz", headers=headers).headers["x-request-id"]
    assert GENERATED.fullmatch(first) and GENERATED.fullmatch(second)
    assert first != second


def test_every_problem_body_names_the_request(make_client):
    client = make_client(max_body_bytes=4096)
    client.headers["X-Request-ID"] = "p-1"
    answers = [
        (422, client.post(URL, json={**LESSON_REQUEST, "seed": -1})),
        (404, client.get("/v1/nothing")),
        (405, client.get(URL)),
        (400, client.post(URL, content=b'{"model": ', headers=JSON)),
        (415, client.post(URL, content=b"{}", headers={"content-type": "text/plain"})),
        # BodyLimitMiddleware answers these itself: declared too large, grown too large,
        # and a Content-Length that is no number.
        (413, client.post(URL, content=b"{" + b" " * 5000 + b"}", headers=JSON)),
        (413, client.post(URL, content=iter([b"[", b"1, " * 3000, b"1]"]), headers=JSON)),
        (400, client.post(URL, content=b"{}", headers={**JSON, "content-length": "x"})),
    ]
    for status, response in answers:
        assert response.status_code == status, response.text[:300]
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["request_id"] == response.headers["x-request-id"] == "p-1"


def test_a_generated_id_is_in_the_problem_too(client):
    response = client.get("/v1/nothing")
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert GENERATED.fullmatch(response.headers["x-request-id"])


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the `gradiag` loggers write, as `gradiag serve` configures them for JSON logs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.RequestIdFilter())
    logger = logging.getLogger("gradiag")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def _access_lines(stream: io.StringIO) -> list[dict]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line["logger"] == "gradiag.access"]


def test_json_access_log_line_per_request(make_client, json_lines):
    client = make_client(log_format="json")
    report = client.post(URL, json=LESSON_REQUEST, headers={"X-Request-ID": "lesson-1"})
    assert report.status_code == 200
    client.get("/healthz", headers={"X-Request-ID": "health-1"})
    client.get("/v1/jobs/" + "0" * 32, headers={"X-Request-ID": "job-1"})
    client.get("/v1/nothing", headers={"X-Request-ID": "none-1"})
    lesson, health, job, unmatched = _access_lines(json_lines)
    assert lesson["msg"] == "request" and lesson["level"] == "INFO"
    assert {k: lesson[k] for k in ("request_id", "method", "route", "status")} == {
        "request_id": "lesson-1",
        "method": "POST",
        "route": "/v1/diagnostics",
        "status": 200,
    }
    assert lesson["model_kind"] == "mlp" and lesson["device"] == "cpu"
    assert isinstance(lesson["duration_ms"], float) and lesson["duration_ms"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", lesson["ts"])
    assert health["route"] == "/healthz" and health["status"] == 200
    assert health["model_kind"] is None and health["device"] is None
    assert job["route"] == "/v1/jobs/{job_id}" and job["status"] == 404  # the template
    assert unmatched["route"] is None and unmatched["status"] == 404


def test_no_access_lines_with_text_logs(make_client, json_lines):
    make_client().get("/healthz")
    assert _access_lines(json_lines) == []


@pytest.fixture
def failing_app():
    """The service with two test-only routes: one raises, one raises mid-response."""
    app = create_app(make_settings())

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail of the failure")

    @app.get("/cut")
    async def cut() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first part"
            raise RuntimeError("failed mid-response")

        return StreamingResponse(chunks())

    return app


@pytest.fixture
def serve_logged(live_server, caplog, monkeypatch):
    """Start a live server for an app; caplog then holds every record logged, uvicorn's
    own included (uvicorn's logging configuration stops them at its `uvicorn` logger), each
    with the request id its handler saw."""
    caplog.handler.addFilter(logs.RequestIdFilter())

    def start(app):
        server = live_server(app)
        monkeypatch.setattr(logging.getLogger("uvicorn"), "propagate", True)
        return server

    yield start
    caplog.handler.filters.clear()


def test_a_500_is_a_problem_logged_once_on_a_usable_connection(serve_logged, failing_app, caplog):
    server = serve_logged(failing_app)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", "/boom", headers={"X-Request-ID": "boom-1"})
    response = connection.getresponse()
    body = response.read()
    # The same connection serves the next request (it used to be dropped: a reset).
    connection.request("GET", "/healthz")
    again = connection.getresponse()
    assert again.status == 200 and json.loads(again.read()) == {"status": "ok"}
    connection.close()
    assert response.status == 500
    assert response.getheader("content-type") == "application/problem+json"
    assert response.getheader("x-request-id") == "boom-1"
    assert (response.getheader("connection") or "").lower() != "close"
    problem = json.loads(body)
    assert problem["code"] == "internal" and problem["request_id"] == "boom-1"
    assert b"Traceback" not in body and b"secret" not in body
    time.sleep(0.2)  # anything the server would log after answering
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, [r.getMessage() for r in tracebacks]
    assert tracebacks[0].name == "gradiag" and tracebacks[0].request_id == "boom-1"
    assert "secret detail of the failure" in caplog.text


def test_a_response_cut_short_ends_its_connection(serve_logged, failing_app, caplog):
    server = serve_logged(failing_app)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", "/cut", headers={"X-Request-ID": "cut-1"})
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("x-request-id") == "cut-1"
    with pytest.raises(http.client.IncompleteRead):  # never taken for a whole body
        response.read()
    connection.close()
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and tracebacks[0].request_id == "cut-1"


def test_gradiag_serve_writes_json_lines(tmp_path):
    """`gradiag serve` with GRADIAG_LOG_FORMAT=json: JSON lines on stderr, the service's
    access line per request and not uvicorn's."""
    stderr = (tmp_path / "stderr").open("w+")
    live = Serve("--log-level", "info", stderr=stderr, log_format="json", drain_s=0)
    try:
        live.wait_ready()
        answer = httpx.post(
            f"{live.url}{URL}", json=LESSON_REQUEST, headers={"X-Request-ID": "s-1"}
        )
        assert answer.status_code == 200
    finally:
        live.process.terminate()
        live.process.wait(timeout=30)
    stderr.seek(0)
    lines = [json.loads(line) for line in stderr.read().splitlines()]  # every line is JSON
    access = [line for line in lines if line["logger"] == "gradiag.access"]
    assert access[-1]["request_id"] == "s-1" and access[-1]["model_kind"] == "mlp"
    assert not [line for line in lines if line["logger"] == "uvicorn.access"]
    assert any(line["logger"] == "uvicorn.error" for line in lines)


def test_a_celery_run_logs_under_the_request_that_submitted_it(caplog):
    """The id travels in the run's message: the worker's lines name it (here a run that
    fails because Redis is unreachable)."""
    from service.execution.celery_worker import WorkerState

    state = WorkerState(make_settings(broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    caplog.handler.addFilter(logs.RequestIdFilter())
    state.run({"job": "0" * 32, "index": 0, "request_id": "w-1"})
    failed = [r for r in caplog.records if r.exc_info]
    assert [r.request_id for r in failed] == ["w-1"]
    assert logs.request_id() is None  # only while the run ran


def test_an_in_process_run_logs_under_the_request_that_submitted_it(
    make_client, caplog, monkeypatch
):
    def broken(*_: object) -> None:
        raise RuntimeError("a bug in a run")

    monkeypatch.setattr("service.execution.inprocess.execute_unit", broken)
    caplog.handler.addFilter(logs.RequestIdFilter())
    response = make_client().post(URL, json=LESSON_REQUEST, headers={"X-Request-ID": "r-1"})
    assert response.status_code == 500 and response.json()["request_id"] == "r-1"
    failed = [r for r in caplog.records if r.exc_info]
    assert [(r.getMessage()[:4], r.request_id) for r in failed] == [("job ", "r-1")]


def test_browsers_may_send_and_read_the_id(make_client):
    client = make_client(cors_origins=["https://app.example"])
    origin = {"Origin": "https://app.example"}
    asks = {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "x-request-id",
    }
    preflight = client.options("/healthz", headers={**origin, **asks})
    assert preflight.status_code == 200
    response = client.get("/healthz", headers={**origin, "X-Request-ID": "b-1"})
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
    assert response.headers["x-request-id"] == "b-1"
