"""Jobs on the in-process backend: the same numbers as the synchronous routes, progress,
cancellation, `Prefer: respond-async`, the 504 that names the job, idempotency, API keys
and /metrics. tests/test_celery.py runs the same against Redis and Celery workers."""

import copy
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.schemas.requests import LESSON_REQUEST

# Seconds of CPU work per run from a model that builds in a fraction of a second.
SLOW = {
    "model": {"kind": "mlp", "layer_sizes": [1024] * 25, "activation": "relu"},
    "input": {"shape": [3900, 1024], "distribution": "normal"},
    "loss": "sum",
}
COMPARE = {
    "base": LESSON_REQUEST,
    "variants": {"plain": {"model": {"shortcut": False}}, "shortcut": {"model": {}}},
}
SWEEP = {
    "base": LESSON_REQUEST,
    "axes": [
        {"path": "model.shortcut", "values": [False, True]},
        {"path": "seed", "values": [1, 2, 3]},
    ],
}
ROUTES = {"diagnostics": "/v1/diagnostics", "compare": "/v1/diagnostics/compare",
          "sweep": "/v1/sweeps"}  # fmt: skip


def without_timing(value: Any) -> Any:
    """A report with its timings removed: they differ from run to run."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k != "timing_ms"}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def wait_for(client: Any, job_id: str, statuses: set[str], limit_s: float = 60, **kw: Any) -> dict:
    deadline = time.monotonic() + limit_s
    while True:
        job = client.get(f"/v1/jobs/{job_id}", **kw).json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.02)


@pytest.fixture(scope="module")
def jobs_client(request: pytest.FixtureRequest) -> Any:
    from fastapi.testclient import TestClient

    from service.main import create_app
    from tests.conftest import make_settings

    with TestClient(create_app(make_settings(limits={"max_flops": 10**15}))) as client:
        yield client


@pytest.mark.parametrize(
    ("kind", "body"), [("diagnostics", LESSON_REQUEST), ("compare", COMPARE), ("sweep", SWEEP)]
)
def test_a_job_gives_what_the_synchronous_route_gives(jobs_client, kind, body):
    submitted = jobs_client.post("/v1/jobs", json={"kind": kind, "request": body})
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    assert submitted.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["kind"] == kind and job["status"] in {"queued", "running", "succeeded"}
    done = wait_for(jobs_client, job["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    assert (
        done["progress"]["done"]
        == done["progress"]["total"]
        == ({"diagnostics": 1, "compare": 2, "sweep": 6}[kind])
    )
    assert done["started_at"] and done["finished_at"] and done["error"] is None
    direct = jobs_client.post(ROUTES[kind], json=body).json()
    assert without_timing(done["result"]) == without_timing(direct)


def test_a_bad_job_is_refused_as_its_route_refuses_it(jobs_client):
    bad = copy.deepcopy(LESSON_REQUEST)
    bad["model"]["layer_sizes"] = [4, 1]  # the input has 3 features
    via_job = jobs_client.post("/v1/jobs", json={"kind": "diagnostics", "request": bad})
    direct = jobs_client.post("/v1/diagnostics", json=bad)
    assert via_job.status_code == direct.status_code == 422
    assert via_job.json()["code"] == direct.json()["code"] == "shape_mismatch"
    assert via_job.json()["errors"][0]["loc"][:2] == ["body", "request"]
    unknown = jobs_client.post("/v1/jobs", json={"kind": "train", "request": LESSON_REQUEST})
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["loc"] == ["body", "kind"]
    assert jobs_client.get("/v1/jobs/" + "0" * 32).status_code == 404
    assert jobs_client.get("/v1/jobs/not-an-id").status_code == 422


def test_progress_moves_and_a_cancelled_job_stops(jobs_client):
    sweep = {"base": SLOW, "axes": [{"path": "seed", "values": [1, 2, 3, 4]}]}
    job = jobs_client.post("/v1/jobs", json={"kind": "sweep", "request": sweep}).json()
    partial = wait_for(jobs_client, job["id"], {"running"}, 60)
    deadline = time.monotonic() + 60
    while partial["progress"]["done"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
        partial = jobs_client.get(f"/v1/jobs/{job['id']}").json()
    assert 0 < partial["progress"]["done"] < 4
    cancelled = jobs_client.delete(f"/v1/jobs/{job['id']}")
    assert cancelled.status_code == 200
    started = time.monotonic()
    final = wait_for(jobs_client, job["id"], {"cancelled", "succeeded", "failed"}, 30)
    assert final["status"] == "cancelled" and final["result"] is None
    assert time.monotonic() - started < 5  # stopped at a layer, not after the remaining runs
    assert final["progress"]["done"] < 4
    # The slot is free again.
    assert jobs_client.post("/v1/diagnostics", json=LESSON_REQUEST).status_code == 200


def test_prefer_respond_async_answers_202_with_the_job(jobs_client):
    response = jobs_client.post(
        "/v1/diagnostics", json=LESSON_REQUEST, headers={"Prefer": "respond-async, wait=5"}
    )
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "respond-async"
    job = wait_for(jobs_client, response.json()["id"], {"succeeded"})
    direct = jobs_client.post("/v1/diagnostics", json=LESSON_REQUEST).json()
    assert without_timing(job["result"]) == without_timing(direct)


def test_past_its_deadline_a_request_gets_504_naming_its_job_which_goes_on(make_client):
    client = make_client(request_timeout_s=0.3, limits={"max_flops": 10**15})
    response = client.post("/v1/diagnostics", json=SLOW)
    assert response.status_code == 504
    problem = response.json()
    assert problem["code"] == "timeout" and problem["job"].startswith("/v1/jobs/")
    assert response.headers["location"] == problem["job"]
    job = wait_for(client, problem["job"].rsplit("/", 1)[1], {"succeeded", "failed"}, 120)
    assert job["status"] == "succeeded"
    assert job["result"]["provenance"]["seed"] == 0


def test_a_job_past_its_own_deadline_fails_with_timeout_and_frees_its_slot(make_client):
    client = make_client(job_timeout_s=0.5, limits={"max_flops": 10**15})
    job = client.post("/v1/jobs", json={"kind": "diagnostics", "request": SLOW}).json()
    started = time.monotonic()
    failed = wait_for(client, job["id"], {"failed", "succeeded"}, 60)
    assert failed["status"] == "failed" and failed["error"]["code"] == "timeout"
    assert time.monotonic() - started < 4
    assert client.post("/v1/diagnostics", json=LESSON_REQUEST).status_code == 200


def assert_idempotent(client: Any, key: str) -> None:
    """The same key and body give the same job; the key with another body, 409."""
    body = {"kind": "diagnostics", "request": LESSON_REQUEST}
    headers = {"Idempotency-Key": key}
    first = client.post("/v1/jobs", json=body, headers=headers)
    again = client.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = {"kind": "diagnostics", "request": {**LESSON_REQUEST, "seed": 7}}
    conflict = client.post("/v1/jobs", json=other, headers=headers)
    assert conflict.status_code == 409 and conflict.json()["code"] == "idempotency_conflict"


def test_an_idempotency_key_never_runs_a_job_twice(jobs_client):
    assert_idempotent(jobs_client, "retry-after-a-dropped-connection")


def test_api_keys_guard_every_v1_route_and_each_key_sees_its_own_jobs(make_client):
    client = make_client(api_keys=["key-a", "key-b"])
    a, b = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
    for method, path in [("post", "/v1/diagnostics"), ("post", "/v1/jobs"),
                         ("get", "/v1/capabilities"), ("get", "/v1/jobs/" + "0" * 32)]:  # fmt: skip
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "key-a"}):
            body = LESSON_REQUEST if method == "post" else None
            refused = client.request(method.upper(), path, headers=headers, json=body)
            assert refused.status_code == 401, (path, headers)
            assert refused.json()["code"] == "unauthorized"
            assert refused.headers["www-authenticate"] == "Bearer"
    assert client.get("/healthz").status_code == 200  # not under /v1
    job = client.post("/v1/jobs", json={"kind": "diagnostics", "request": LESSON_REQUEST},
                      headers=a).json()  # fmt: skip
    assert wait_for(client, job["id"], {"succeeded"}, headers=a)["status"] == "succeeded"
    assert client.get(f"/v1/jobs/{job['id']}", headers=b).status_code == 404
    assert client.delete(f"/v1/jobs/{job['id']}", headers=b).status_code == 404
    assert client.post("/v1/diagnostics", json=LESSON_REQUEST, headers=b).status_code == 200


def test_metrics_parse_as_prometheus_text(jobs_client):
    jobs_client.post("/v1/diagnostics", json=LESSON_REQUEST)
    response = jobs_client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    requests = families["gradiag_requests"].samples
    assert any(
        s.labels == {"route": "/v1/diagnostics", "method": "POST", "status": "200"} and s.value
        for s in requests
    )
    runs = [s for s in families["gradiag_run_seconds"].samples if s.name.endswith("_count")]
    assert any(s.labels == {"kind": "diagnostics", "device": "cpu"} and s.value for s in runs)
    assert {s.labels["state"] for s in families["gradiag_jobs"].samples} >= {"succeeded"}
    assert families["gradiag_workers"].samples[0].value == 1
    assert "gradiag_queue_depth" in families


def test_answered_requests_are_not_kept_and_a_cancelled_queued_job_frees_its_slot(make_client):
    client = make_client(concurrency=1, queue_capacity=1, limits={"max_flops": 10**15})
    for _ in range(5):
        assert client.post("/v1/diagnostics", json=LESSON_REQUEST).status_code == 200
    assert client.get("/readyz").json()["backend"]["jobs_kept"] == 0
    running = client.post("/v1/jobs", json={"kind": "diagnostics", "request": SLOW}).json()
    wait_for(client, running["id"], {"running"})
    queued = client.post("/v1/jobs", json={"kind": "diagnostics", "request": LESSON_REQUEST})
    assert queued.status_code == 202 and queued.json()["status"] == "queued"
    full = client.post("/v1/jobs", json={"kind": "diagnostics", "request": LESSON_REQUEST})
    assert full.status_code == 429
    cancelled = client.delete(f"/v1/jobs/{queued.json()['id']}").json()
    assert cancelled["status"] == "cancelled"  # at once: it never started
    again = client.post("/v1/jobs", json={"kind": "diagnostics", "request": LESSON_REQUEST})
    assert again.status_code == 202  # its slot is free
    client.delete(f"/v1/jobs/{running['id']}")
    assert wait_for(client, again.json()["id"], {"succeeded"})["status"] == "succeeded"


def test_a_job_whose_deadline_passes_in_the_queue_fails_with_timeout(make_client):
    client = make_client(concurrency=1, job_timeout_s=1.0, limits={"max_flops": 10**15})
    first = client.post("/v1/jobs", json={"kind": "diagnostics", "request": SLOW}).json()
    second = client.post("/v1/jobs", json={"kind": "diagnostics", "request": LESSON_REQUEST})
    waited = wait_for(client, second.json()["id"], {"failed", "succeeded", "cancelled"}, 30)
    assert waited["status"] == "failed" and waited["error"]["code"] == "timeout"
    assert wait_for(client, first["id"], {"failed"}, 30)["error"]["code"] == "timeout"


def test_a_large_sweep_takes_one_in_process_slot(make_client):
    client = make_client(concurrency=1, queue_capacity=1, limits={"max_flops": 10**15})
    running = client.post("/v1/jobs", json={"kind": "diagnostics", "request": SLOW}).json()
    wait_for(client, running["id"], {"running"})
    sweep = {"base": LESSON_REQUEST, "axes": [{"path": "seed", "values": list(range(40))}]}
    queued = client.post("/v1/jobs", json={"kind": "sweep", "request": sweep})
    assert queued.status_code == 202, queued.text
    client.delete(f"/v1/jobs/{running['id']}")
    done = wait_for(client, queued.json()["id"], {"succeeded", "failed"}, 60)
    assert done["status"] == "succeeded" and done["progress"]["done"] == 40
