"""The celery backend against a real `redis-server` of its own and real `gradiag worker`
processes: the same numbers as the in-process route, progress, cancellation, the 504 that
names the job, a worker child killed mid-run, a queue nobody consumes, API keys, /metrics,
and Redis stopped and started again (last: it empties Redis)."""

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.main import create_app
from service.schemas.requests import LESSON_REQUEST
from tests.conftest import make_settings
from tests.processes import RedisServer, Worker
from tests.test_jobs import COMPARE, SWEEP, assert_idempotent, wait_for, without_timing

pytestmark = pytest.mark.slow

# About two seconds of one core: long enough to kill or cancel mid-run.
MEDIUM = {
    "model": {"kind": "mlp", "layer_sizes": [1024] * 9, "activation": "relu"},
    "input": {"shape": [2000, 1024], "distribution": "normal"},
    "loss": "sum",
}
LIMITS = {"max_flops": 10**15}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer) -> Iterator[Worker]:
    process = Worker(redis_server.url, "cpu.small,cpu.large", max_flops=10**15)
    try:
        yield process.wait_ready()
    finally:
        process.stop()


def celery_client(redis_server: RedisServer, **overrides: Any) -> TestClient:
    settings = make_settings(
        backend="celery", broker_url=redis_server.url, limits=LIMITS, **overrides
    )
    return TestClient(create_app(settings), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def api(redis_server: RedisServer, worker: Worker) -> Iterator[TestClient]:
    with celery_client(redis_server) as client:
        yield client


def submit(client: TestClient, kind: str, body: dict, **kw: Any) -> dict:
    response = client.post("/v1/jobs", json={"kind": kind, "request": body}, **kw)
    assert response.status_code == 202, response.text
    return response.json()


def test_the_lesson_through_celery_equals_the_in_process_route(api, client):
    served = api.post("/v1/diagnostics", json=LESSON_REQUEST)
    assert served.status_code == 200, served.text
    assert without_timing(served.json()) == without_timing(
        client.post("/v1/diagnostics", json=LESSON_REQUEST).json()
    )
    ready = api.get("/readyz").json()
    assert ready["backend"]["name"] == "celery" and ready["backend"]["workers"] >= 1
    assert ready["model_cache"] is None  # the API process runs no model


@pytest.mark.parametrize(("kind", "body", "route"), [
    ("compare", COMPARE, "/v1/diagnostics/compare"), ("sweep", SWEEP, "/v1/sweeps")])  # fmt: skip
def test_compare_and_sweep_jobs_fan_out_and_equal_the_in_process_route(
    api, client, kind, body, route
):
    job = submit(api, kind, body)
    done = wait_for(api, job["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"]["done"] == done["progress"]["total"] > 1
    assert without_timing(done["result"]) == without_timing(client.post(route, json=body).json())


def test_progress_moves_and_cancel_stops_a_running_job(api):
    sweep = {"base": MEDIUM, "axes": [{"path": "seed", "values": [1, 2, 3, 4, 5]}]}
    job = submit(api, "sweep", sweep)
    deadline = time.monotonic() + 120
    seen = set()
    while True:
        state = api.get(f"/v1/jobs/{job['id']}").json()
        seen.add(state["progress"]["done"])
        if state["progress"]["done"] >= 1 or state["status"] in {"succeeded", "failed"}:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert 0 in seen and state["status"] == "running" and 0 < state["progress"]["done"] < 5
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 200
    started = time.monotonic()
    final = wait_for(api, job["id"], {"cancelled", "succeeded", "failed"}, 60)
    assert final["status"] == "cancelled"
    assert time.monotonic() - started < 5
    assert final["progress"]["done"] < 5
    # The worker is free again.
    assert api.post("/v1/diagnostics", json=LESSON_REQUEST).status_code == 200


def test_prefer_respond_async_and_the_504_that_names_the_job(redis_server, worker, api):
    accepted = api.post("/v1/diagnostics", json=LESSON_REQUEST, headers={"Prefer": "respond-async"})
    assert accepted.status_code == 202 and accepted.headers["location"].startswith("/v1/jobs/")
    assert wait_for(api, accepted.json()["id"], {"succeeded"})["result"]["loss"] is not None
    with celery_client(redis_server, request_timeout_s=0.3) as impatient:
        response = impatient.post("/v1/diagnostics", json=MEDIUM)
        assert response.status_code == 504, response.text
        location = response.json()["job"]
        job = wait_for(impatient, location.rsplit("/", 1)[1], {"succeeded", "failed"}, 120)
    assert job["status"] == "succeeded"


def test_a_worker_child_killed_mid_run_is_retried_once_then_fails_with_worker_lost(
    api, worker, redis_server
):
    store = redis_server.client()

    def kill_child_while_running(job_id: str, delivery: int) -> None:
        """SIGKILL the children once the run's `delivery`-th delivery has started."""
        deadline = time.monotonic() + 60
        while int(store.hget(f"gradiag:job:{job_id}:attempts", "0") or 0) < delivery:
            assert time.monotonic() < deadline, "the run was not delivered"
            time.sleep(0.02)
        time.sleep(0.3)  # into the run
        children = worker.children()
        assert children
        for pid in children:
            os.kill(pid, signal.SIGKILL)

    job = submit(api, "diagnostics", MEDIUM)
    kill_child_while_running(job["id"], 1)
    retried = wait_for(api, job["id"], {"succeeded", "failed"}, 120)
    assert retried["status"] == "succeeded", retried["error"]
    assert store.hget(f"gradiag:job:{job['id']}:attempts", "0") == "2"

    worker.wait_ready()
    job = submit(api, "diagnostics", {**MEDIUM, "seed": 3})
    kill_child_while_running(job["id"], 1)
    kill_child_while_running(job["id"], 2)
    lost = wait_for(api, job["id"], {"succeeded", "failed"}, 120)
    assert lost["status"] == "failed" and lost["error"]["code"] == "worker_lost"
    worker.wait_ready()
    assert api.post("/v1/diagnostics", json=LESSON_REQUEST).status_code == 200


def test_a_compare_of_one_variant(api, client):
    body = {"base": LESSON_REQUEST, "variants": {"only": {}}}
    job = wait_for(api, submit(api, "compare", body)["id"], {"succeeded", "failed"})
    assert job["status"] == "succeeded", job["error"]
    direct = client.post("/v1/diagnostics/compare", json=body).json()
    assert without_timing(job["result"]) == without_timing(direct)


def test_an_idempotency_key_never_runs_a_job_twice(api):
    assert_idempotent(api, "celery-retry")


def test_a_run_past_its_jobs_deadline_fails_the_job_with_timeout(redis_server, worker, api):
    with celery_client(redis_server, job_timeout_s=0.5) as strict:
        job = submit(strict, "diagnostics", {**MEDIUM, "seed": 11})
        started = time.monotonic()
        failed = wait_for(strict, job["id"], {"failed", "succeeded"}, 60)
    assert failed["status"] == "failed" and failed["error"]["code"] == "timeout"
    assert time.monotonic() - started < 10
    assert api.post("/v1/diagnostics", json=LESSON_REQUEST).status_code == 200


def test_a_job_nobody_consumes_stays_queued_and_the_route_answers_504(redis_server, worker):
    # A device whose queue no worker serves.
    with celery_client(
        redis_server, request_timeout_s=0.5, allowed_devices=["cpu", "cuda:7"]
    ) as client:
        body = {**LESSON_REQUEST, "device": "cuda:7"}
        response = client.post("/v1/diagnostics", json=body)
        assert response.status_code == 504
        job_id = response.json()["job"].rsplit("/", 1)[1]
        time.sleep(0.5)
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        depth = redis_server.client().llen("cuda:7.small")
        assert depth >= 1
        assert client.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"


def test_a_shared_literal_base_is_sent_once_not_in_every_runs_message(redis_server, worker, client):
    # Before, each run's message carried the whole request: a 256-point sweep of a 6.7 MiB
    # base published 256 copies, dumped on the event loop. Now the base's tensors go to
    # the job's `:tensors` hash once and each message refers to them.
    rows = [[(i * 31 + j) % 17 / 17 for j in range(100)] for i in range(200)]
    base = {"model": {"kind": "mlp", "layer_sizes": [100, 8, 1]}, "input": rows,
            "target": [[0.5]] * 200, "loss": "mse"}  # fmt: skip
    sweep = {"base": base, "axes": [{"path": "seed", "values": [1, 2, 3]}]}
    queue = redis_server.client()
    with celery_client(redis_server, allowed_devices=["cpu", "cuda:7"]) as parked:
        # Parked on a queue nobody serves, to read the messages as they were sent.
        job = submit(parked, "sweep", {**sweep, "base": {**base, "device": "cuda:7"}})
        messages = [m for m in queue.lrange("cuda:7.small", 0, -1) if job["id"] in m]
        assert len(messages) == 3
        assert all(len(m) < 4096 for m in messages), [len(m) for m in messages]
        stored = queue.hgetall(f"gradiag:job:{job['id']}:tensors")
        assert sorted(orjson.loads(v) for v in stored.values()) == sorted([rows, [[0.5]] * 200])
        parked.delete(f"/v1/jobs/{job['id']}")
    with celery_client(redis_server) as api_client:
        done = wait_for(
            api_client, submit(api_client, "sweep", sweep)["id"], {"succeeded", "failed"}
        )
    assert done["status"] == "succeeded", done["error"]
    assert without_timing(done["result"]) == without_timing(
        client.post("/v1/sweeps", json=sweep).json()
    )


def test_api_keys_on_the_celery_backend(redis_server, worker):
    with celery_client(redis_server, api_keys=["key-a", "key-b"]) as client:
        a, b = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
        assert client.post("/v1/jobs", json={"kind": "diagnostics", "request": LESSON_REQUEST}
                           ).status_code == 401  # fmt: skip
        job = submit(client, "diagnostics", LESSON_REQUEST, headers=a)
        assert wait_for(client, job["id"], {"succeeded"}, headers=a)["status"] == "succeeded"
        assert client.get(f"/v1/jobs/{job['id']}", headers=b).status_code == 404


def test_metrics_on_the_celery_backend(api):
    api.post("/v1/diagnostics", json=LESSON_REQUEST)
    text = api.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    counts = [s for s in families["gradiag_run_seconds"].samples if s.name.endswith("_count")]
    assert any(s.labels["kind"] == "diagnostics" and s.value >= 1 for s in counts)
    assert families["gradiag_workers"].samples[0].value >= 1
    assert any(s.labels["queue"] == "cpu.small" for s in families["gradiag_queue_depth"].samples)
    assert any(s.labels["state"] == "succeeded" for s in families["gradiag_jobs"].samples)


def test_redis_stopped_gives_503_and_the_service_recovers_when_it_is_back(
    api, redis_server, worker
):
    redis_server.stop()
    try:
        started = time.monotonic()
        assert api.get("/readyz").status_code == 503
        for response in (
            api.post("/v1/diagnostics", json=LESSON_REQUEST),
            api.post("/v1/jobs", json={"kind": "diagnostics", "request": LESSON_REQUEST}),
            api.get("/v1/jobs/" + "0" * 32),
        ):
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "not_ready"
            assert int(response.headers["retry-after"]) >= 1
        assert time.monotonic() - started < 15  # answers, not hangs
    finally:
        redis_server.start()
    deadline = time.monotonic() + 60
    while api.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the API did not recover"
        time.sleep(0.2)
    worker.wait_ready()
    deadline = time.monotonic() + 60
    while True:  # the worker reconnects to the broker by itself
        response = api.post("/v1/diagnostics", json=LESSON_REQUEST)
        if response.status_code == 200:
            break
        assert time.monotonic() < deadline, response.text
        time.sleep(0.5)
