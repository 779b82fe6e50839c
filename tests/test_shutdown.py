"""A shutdown load balancers can see: on SIGTERM `gradiag serve` keeps serving while /readyz
answers 503 for GRADIAG_DRAIN_S, lets requests in flight finish, and exits 0. A real
process and real signals."""

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.processes import Serve

pytestmark = pytest.mark.slow

DRAIN_S = 3.0
SLACK_S = 10.0  # lifespan shutdown and a loaded 2-core machine

# About 1.5 s of one CPU thread: four 2048-wide layers, a batch of 1024.
SLOW_REQUEST = {
    "model": {"kind": "mlp", "layer_sizes": [2048, 2048, 2048, 2048, 2048, 1]},
    "input": {"shape": [1024, 2048], "distribution": "normal", "seed": 1},
    "target": {"shape": [1024, 1], "distribution": "normal", "seed": 2},
}


def wait_for_503(url: str, limit_s: float = 2.0) -> httpx.Response:
    """/readyz on a new connection each time, as a load balancer's probe, until 503."""
    deadline = time.monotonic() + limit_s
    while (response := httpx.get(f"{url}/readyz", timeout=5)).status_code != 503:
        assert time.monotonic() < deadline, "/readyz did not turn 503"
        time.sleep(0.05)
    return response


def test_sigterm_drains_serves_and_finishes_in_flight_runs_then_exits_0():
    serve = Serve(drain_s=DRAIN_S).wait_ready()
    try:
        with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=serve.url, timeout=60) as client:
            url = f"{serve.url}/v1/diagnostics"
            in_flight = pool.submit(httpx.post, url, json=SLOW_REQUEST, timeout=60)
            time.sleep(0.5)  # sent, and running
            serve.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            ready = wait_for_503(serve.url)
            assert ready.json()["code"] == "not_ready"
            assert ready.json()["detail"] == "shutting down"
            assert ready.headers["retry-after"] == str(int(DRAIN_S))
            assert httpx.get(f"{serve.url}/healthz", timeout=5).status_code == 200
            # 503 for the whole drain, on new connections: the listener stays open.
            while time.monotonic() < signalled + DRAIN_S - 1.0:
                assert httpx.get(f"{serve.url}/readyz", timeout=5).status_code == 503
                time.sleep(0.1)
            # A run sent late in the drain is served, though the listener closes meanwhile.
            assert client.post("/v1/diagnostics", json=SLOW_REQUEST).status_code == 200
            assert in_flight.result().status_code == 200
        assert serve.process.wait(timeout=DRAIN_S + SLACK_S) == 0
        elapsed = time.monotonic() - signalled
        assert DRAIN_S <= elapsed <= DRAIN_S + SLACK_S, elapsed
    finally:
        serve.stop()


def test_a_second_signal_ends_the_drain():
    serve = Serve(drain_s=120).wait_ready()
    try:
        serve.process.send_signal(signal.SIGTERM)
        wait_for_503(serve.url)
        serve.process.send_signal(signal.SIGTERM)
        second = time.monotonic()
        assert serve.process.wait(timeout=SLACK_S) == 0
        assert time.monotonic() - second < SLACK_S
    finally:
        serve.stop()


def test_several_workers_drain_too():
    serve = Serve("--workers", "2", drain_s=DRAIN_S).wait_ready()
    try:
        serve.process.send_signal(signal.SIGTERM)  # the supervisor passes it on to each worker
        signalled = time.monotonic()
        assert wait_for_503(serve.url).json()["detail"] == "shutting down"
        assert serve.process.wait(timeout=DRAIN_S + SLACK_S) == 0
        assert time.monotonic() - signalled >= DRAIN_S
    finally:
        serve.stop()
