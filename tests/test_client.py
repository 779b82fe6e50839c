"""service.client against a live server (uvicorn on 127.0.0.1): the reports its routes
give, jobs, problems, retries on 429 and the API key; and service.client.local, the same
calls in this process."""

import asyncio
import copy
import logging
import threading
import time

import httpx
import pytest

from service.client import AsyncClient, Client, GradiagProblem, Retry
from service.client.local import AsyncLocalClient, LocalClient
from service.client.retry import Attempts
from service.schemas.requests import LESSON_REQUEST, DiagnosticsRequest
from service.schemas.sweeps import SweepRequest
from tests.conftest import make_settings
from tests.processes import free_port
from tests.test_jobs import COMPARE, SLOW, SWEEP, without_timing

BIG_BUDGET = {"max_flops": 10**15}
BAD = copy.deepcopy(LESSON_REQUEST)
BAD["model"]["layer_sizes"] = [4, 1]  # the input has 3 features


def route(server, path, body=None):
    response = httpx.request("POST" if body else "GET", server.url + path, json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_calls_give_the_reports_the_routes_give(live_server):
    server = live_server()
    with Client(server.url) as client:
        report = client.diagnose(LESSON_REQUEST)
        assert without_timing(report) == without_timing(
            route(server, "/v1/diagnostics", LESSON_REQUEST)
        )
        # The server's own models as requests: their fields that were set are sent.
        as_model = client.diagnose(DiagnosticsRequest.model_validate(LESSON_REQUEST))
        assert without_timing(as_model) == without_timing(report)
        compare = client.compare(COMPARE)
        assert without_timing(compare) == without_timing(
            route(server, "/v1/diagnostics/compare", COMPARE)
        )
        sweep = client.sweep(SweepRequest.model_validate(SWEEP))
        assert sweep == route(server, "/v1/sweeps", SWEEP)
        capabilities = client.capabilities()
        assert capabilities.model_dump(mode="json") == route(server, "/v1/capabilities")


def test_jobs_report_progress_and_can_be_cancelled(live_server):
    server = live_server(limits=BIG_BUDGET)
    seen = []
    with Client(server.url) as client:
        job = client.submit(SWEEP)
        assert job["kind"] == "sweep" and job["status"] in {"queued", "running", "succeeded"}
        done = client.wait(job, progress=seen.append, poll_s=0.01)
        assert done["status"] == "succeeded"
        assert seen[-1] == {"done": 6, "total": 6}
        assert [p["done"] for p in seen] == sorted({p["done"] for p in seen})  # each change once
        assert done["result"] == route(server, "/v1/sweeps", SWEEP)
        assert client.job(job["id"]) == done
        # A sweep with `progress` runs as a job and gives the report.
        assert client.sweep(SWEEP, progress=seen.append) == done["result"]

        slow = client.submit({"base": SLOW, "axes": [{"path": "seed", "values": [1, 2, 3]}]})
        deadline = time.monotonic() + 60
        while client.job(slow)["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert client.cancel(slow)["id"] == slow["id"]
        cancelled = client.wait(slow["id"], timeout_s=30)
        assert cancelled["status"] == "cancelled" and cancelled["result"] is None


def test_an_error_answer_raises_a_problem_with_its_fields(live_server):
    server = live_server()
    with Client(server.url) as client:
        with pytest.raises(GradiagProblem) as raised:
            client.diagnose(BAD)
        problem = raised.value
        assert (problem.status, problem.code) == (422, "shape_mismatch")
        assert problem.errors[0].loc == ["body", "input"]
        assert "last dimension of 4" in problem.detail and problem.title
        assert problem.request_id and problem.document["request_id"] == problem.request_id
        assert problem.attempts == 1 and problem.retry_after is None
        # A job is refused as its route refuses it, located under the job's `request`.
        with pytest.raises(GradiagProblem) as raised:
            client.submit(BAD)
        assert raised.value.errors[0].loc == ["body", "request", "input"]
        with pytest.raises(GradiagProblem) as raised:
            client.job("0" * 32)
        assert (raised.value.status, raised.value.code) == (404, "not_found")


def test_retry_after_is_honoured_within_the_budget():
    def refused(retry_after: str | None) -> httpx.Response:
        headers = {"Retry-After": retry_after} if retry_after else {}
        return httpx.Response(429, headers=headers)

    attempts = Attempts(Retry(attempts=4, budget_s=10, max_wait_s=5, backoff_s=0.5), "POST", "/")
    attempts.start()
    assert attempts.after_response(refused("2")) == 2.0
    attempts.start()
    assert attempts.after_response(refused("30")) == 5.0  # cut to max_wait_s
    attempts.start()
    assert attempts.after_response(refused("4")) is None  # 2 + 5 + 4 > budget_s
    attempts = Attempts(Retry(attempts=2, backoff_s=0.5), "POST", "/")
    attempts.start()
    assert attempts.after_response(refused(None)) == 0.5  # no Retry-After: the backoff
    assert attempts.after_response(httpx.Response(422)) is None
    attempts.start()
    assert attempts.after_response(refused("1")) is None  # no tries left
    date = "Wed, 21 Oct 2015 07:28:00 GMT"  # in the past: at once
    assert Attempts(Retry(), "GET", "/").after_response(refused(date)) == 0.0


def test_a_full_server_is_tried_again_until_it_takes_the_call(live_server, caplog):
    caplog.set_level(logging.INFO, logger="service.client")
    server = live_server(concurrency=1, queue_capacity=0, limits=BIG_BUDGET)
    with Client(server.url) as client:
        slow = client.submit(SLOW)
        deadline = time.monotonic() + 60
        while client.job(slow)["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)

        # One try: the 429 as answered, with its Retry-After.
        with pytest.raises(GradiagProblem) as raised, Client(server.url, retry=Retry(1)) as once:
            once.diagnose(LESSON_REQUEST)
        assert (raised.value.status, raised.value.code) == (429, "overloaded")
        assert raised.value.attempts == 1 and raised.value.retry_after >= 1
        # Retry-After (at least 1 s) past the budget: no wait, the 429 at once.
        budget = Retry(attempts=9, budget_s=0.5)
        with pytest.raises(GradiagProblem) as raised, Client(server.url, retry=budget) as hurried:
            hurried.diagnose(LESSON_REQUEST)
        assert raised.value.attempts == 1
        # Three tries, waits cut to 0.05 s each.
        short = Retry(attempts=3, max_wait_s=0.05)
        with pytest.raises(GradiagProblem) as raised, Client(server.url, retry=short) as thrice:
            thrice.diagnose(LESSON_REQUEST)
        assert raised.value.attempts == 3 and raised.value.status == 429
        assert len([r for r in caplog.records if "429" in r.getMessage()]) == 2

        # Tried until the slot is free: freed by cancelling the slow job after a retry.
        caplog.clear()
        answer = {}
        patient = Client(server.url, retry=Retry(attempts=1000, max_wait_s=0.05))
        thread = threading.Thread(target=lambda: answer.update(patient.diagnose(LESSON_REQUEST)))
        thread.start()
        while not caplog.records:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.01)
        client.cancel(slow)
        thread.join(60)
        patient.close()
    assert answer["diagnosis"]["verdict"] == "healthy"


def test_an_unreachable_server_is_tried_again_then_its_error_raised(caplog):
    caplog.set_level(logging.INFO, logger="service.client")
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(httpx.ConnectError), Client(url, retry=Retry(2, backoff_s=0.01)) as client:
        client.diagnose(LESSON_REQUEST)
    assert len(caplog.records) == 1 and "ConnectError" in caplog.records[0].getMessage()


def test_url_and_key_come_from_the_environment(live_server, monkeypatch):
    server = live_server(api_keys=["sesame"])
    monkeypatch.setenv("GRADIAG_URL", server.url)
    monkeypatch.setenv("GRADIAG_API_KEY", "sesame")
    with Client() as client:
        assert client.base_url.rstrip("/") == server.url
        assert client.capabilities().backend == "inprocess"
    with pytest.raises(GradiagProblem) as raised, Client(api_key="") as keyless:
        keyless.capabilities()
    assert (raised.value.status, raised.value.code) == (401, "unauthorized")
    monkeypatch.delenv("GRADIAG_URL")
    with pytest.raises(ValueError, match="GRADIAG_URL"):
        Client()


def test_local_clients_give_what_a_server_gives(live_server):
    server = live_server()
    with Client(server.url) as remote:
        expected = without_timing(remote.compare(COMPARE))
        with pytest.raises(GradiagProblem) as refused:
            remote.diagnose(BAD)
    local = LocalClient(make_settings())
    try:
        assert without_timing(local.compare(COMPARE)) == expected
        assert local.sweep(SWEEP, progress=lambda p: None) == route(server, "/v1/sweeps", SWEEP)
        with pytest.raises(GradiagProblem) as problem:
            local.diagnose(BAD)
        assert problem.value.document["errors"] == refused.value.document["errors"]
        assert (problem.value.status, problem.value.code) == (422, refused.value.code)
    finally:
        local.close()
    local.close()  # twice is fine

    async def both() -> tuple[object, object]:
        async with AsyncClient(server.url) as remote, AsyncLocalClient(make_settings()) as here:
            return await remote.compare(COMPARE), await here.compare(COMPARE)

    remote_report, local_report = asyncio.run(both())
    assert without_timing(remote_report) == without_timing(local_report) == expected


def test_a_plot_is_the_image_asked_for(live_server):
    server = live_server()
    compare = {"base": LESSON_REQUEST, "variants": {"plain": {"model": {"shortcut": False}},
                                                    "shortcut": {}}}  # fmt: skip
    with Client(server.url) as client:
        svg = client.plot(LESSON_REQUEST, "image/svg+xml")
        png = client.plot(compare, "image/png")
    assert svg.lstrip().startswith(b"<") and b"<svg" in svg
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_a_local_client_leaves_the_process_as_it_found_it():
    import gc

    import torch

    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    frozen = gc.get_freeze_count()
    torch.use_deterministic_algorithms(False)
    try:
        with LocalClient(make_settings(deterministic=True, torch_threads=1)) as local:
            assert local.diagnose(LESSON_REQUEST)["diagnosis"]["verdict"] == "healthy"
            assert torch.are_deterministic_algorithms_enabled()  # the service's setting
        assert not torch.are_deterministic_algorithms_enabled()  # the caller's, back
        assert torch.get_num_threads() == before[1]
        assert gc.get_freeze_count() <= frozen  # nothing more frozen out of the collector's view
    finally:
        torch.use_deterministic_algorithms(before[0])
