"""Execution: admission, deadlines, disconnects, concurrency and the global RNG."""

import asyncio
import copy
import gc
import time

import httpx
import pytest
import torch

from service.schemas.requests import LESSON_REQUEST
from tests.test_model_cache import BATCH_NORM_DROPOUT, without_timing
from tests.test_parity_mlp import random_case

URL = "/v1/diagnostics"
# Seconds of CPU work (24 layers of 1024x1024 on a batch of 3900, just under the input
# limit) from a model that builds in a fraction of a second: a run that is cancelled frees
# its slot long before it would have finished.
SLOW = {
    "model": {"kind": "mlp", "layer_sizes": [1024] * 25, "activation": "relu"},
    "input": {"shape": [3900, 1024], "distribution": "normal"},
    "loss": "sum",
}
# Well under SLOW's run time, well over the time to its next cancellation point.
CANCELLED_WITHIN_S = 1.5


async def in_flight(client: httpx.AsyncClient) -> int:
    return (await client.get("/readyz")).json()["backend"]["in_flight"]


async def wait_until_idle(client: httpx.AsyncClient, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while await in_flight(client):
        assert time.monotonic() < deadline, "the slot was never freed"
        await asyncio.sleep(0.02)


async def wait_until_busy(client: httpx.AsyncClient, limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not await in_flight(client):
        assert time.monotonic() < deadline, "the run never started"
        await asyncio.sleep(0.005)


def test_full_queue_answers_429_with_retry_after(live_server):
    server = live_server(concurrency=1, queue_capacity=0, limits={"max_flops": 1e15})

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            slow = asyncio.create_task(client.post(URL, json=SLOW))
            await wait_until_busy(client)
            refused = await client.post(URL, json=LESSON_REQUEST)
            # Budget is checked before admission: an over-budget request is a 422, not a 429.
            huge = copy.deepcopy(LESSON_REQUEST)
            huge["model"]["layer_sizes"] = [3, 10**6, 10**6, 1]
            over_budget = await client.post(URL, json=huge)
            return refused, over_budget, await slow

    refused, over_budget, slow = asyncio.run(scenario())
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "overloaded"
    assert int(refused.headers["retry-after"]) >= 1
    assert over_budget.status_code == 422 and over_budget.json()["code"] == "budget_exceeded"
    assert slow.status_code == 200


def test_deadline_gives_504_naming_the_job_whose_cancel_frees_the_slot(live_server):
    server = live_server(concurrency=1, request_timeout_s=0.2, limits={"max_flops": 1e15})

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            timed_out = await client.post(URL, json=SLOW)
            assert (await in_flight(client)) == 1  # the job goes on
            await client.delete(timed_out.json()["job"])
            await wait_until_idle(client, CANCELLED_WITHIN_S)  # stopped at its next layer
            after = await client.post(URL, json=LESSON_REQUEST)
            return timed_out, after

    # The server runs in this process, whose full garbage collections took 230-410 ms in
    # the whole suite: one during the lesson would exceed its deadline.
    gc.disable()
    try:
        timed_out, after = asyncio.run(scenario())
    finally:
        gc.enable()
    assert timed_out.status_code == 504
    assert timed_out.json()["code"] == "timeout"
    assert timed_out.json()["job"].startswith("/v1/jobs/")
    assert after.status_code == 200


# A 335M-parameter MLP (1.3 GB) whose cold build here outlasts two 1 s deadlines: a lesson
# queued behind a build that ignored its deadline would miss its own (docs/performance.md).
BIG_BUILD = {
    "model": {"kind": "mlp", "layer_sizes": [8192] * 6 + [1], "activation": "relu"},
    "input": {"shape": [1, 8192], "distribution": "normal"},
    "loss": "sum",
}


@pytest.mark.slow
def test_a_deadline_cancels_a_build_and_frees_the_slot(make_client):
    client = make_client(concurrency=1, request_timeout_s=1.0, job_timeout_s=1.0)
    timed_out = client.post(URL, json=BIG_BUILD)
    assert timed_out.status_code == 504 and timed_out.json()["code"] == "timeout"
    deadline = time.monotonic() + 60
    while (ready := client.get("/readyz").json())["backend"]["in_flight"]:
        assert time.monotonic() < deadline, "the slot was never freed"
        time.sleep(0.02)
    # The build stopped part-way (it would otherwise have run to its end, seconds later).
    assert ready["model_cache"]["builds_cancelled"] == 1
    job = client.get(timed_out.json()["job"]).json()
    assert job["status"] == "failed" and job["error"]["code"] == "timeout"
    assert client.post(URL, json=LESSON_REQUEST).status_code == 200


def test_client_that_disconnects_frees_its_slot(live_server):
    server = live_server(concurrency=1, queue_capacity=0, limits={"max_flops": 1e15})

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            with pytest.raises(httpx.ReadTimeout):
                async with httpx.AsyncClient(base_url=server.url, timeout=0.3) as impatient:
                    await impatient.post(URL, json=SLOW)
            await wait_until_idle(client, CANCELLED_WITHIN_S)
            return await client.post(URL, json=LESSON_REQUEST)

    assert asyncio.run(scenario()).status_code == 200


def test_concurrent_requests_equal_sequential_ones(live_server):
    server = live_server(concurrency=2, queue_capacity=64)
    requests = [{k: v for k, v in random_case(i).items() if v is not None} for i in range(20)]
    requests += [LESSON_REQUEST] * 4

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            sequential = [(await client.post(URL, json=r)).json() for r in requests]
            responses = await asyncio.gather(*(client.post(URL, json=r) for r in requests))
            return sequential, [r.json() for r in responses]

    sequential, concurrent = asyncio.run(scenario())
    assert [without_timing(r) for r in concurrent] == [without_timing(r) for r in sequential]


def test_serving_never_touches_the_global_rng(make_client):
    # No cache: every request builds (draws weights), and one draws dropout masks.
    client = make_client(model_cache_bytes=0)
    torch.manual_seed(42)
    state = torch.get_rng_state()
    cases = [{k: v for k, v in random_case(i).items() if v is not None} for i in range(4)]
    for case in [*cases, BATCH_NORM_DROPOUT]:
        assert client.post(URL, json=case).status_code == 200
    assert torch.equal(torch.get_rng_state(), state)


def test_stopping_backend_finishes_in_flight_work_and_reports_not_ready():
    from service.config import Settings
    from service.errors import NotReady
    from service.execution.devices import DevicePolicy
    from service.execution.inprocess import InProcessBackend
    from service.run_service import RunService
    from service.schemas.jobs import DiagnosticsJob
    from service.schemas.requests import DiagnosticsRequest

    settings = Settings(device="cpu", concurrency=1, queue_capacity=1, torch_threads=1)
    devices = DevicePolicy.from_settings(settings)

    async def scenario():
        backend = InProcessBackend(settings)
        await backend.start()
        runs = RunService(settings, devices, backend)
        request = DiagnosticsRequest.model_validate(LESSON_REQUEST)
        job, _ = await runs.submit(DiagnosticsJob(kind="diagnostics", request=request), "")
        while job["status"] == "queued":  # in flight: running, not waiting
            await asyncio.sleep(0.001)
        stopping = asyncio.create_task(backend.stop())
        await asyncio.sleep(0)
        try:
            await backend.ready()
            ready_while_stopping = True
        except NotReady:
            ready_while_stopping = False
        await stopping
        return ready_while_stopping, await backend.job(job["id"], "")

    ready, job = asyncio.run(scenario())
    assert ready is False
    assert job["status"] == "succeeded" and job["result"]["loss"] is not None


@pytest.mark.parametrize(
    ("named", "allowed", "planned"),
    [
        (None, {"cpu"}, "cpu"),
        ("auto", {"cpu"}, "cpu"),  # auto: the server's device, like none
        ("auto", {"cuda", "cpu"}, "cuda"),
        ("cuda:0", {"cuda", "cpu"}, "cuda"),  # one device, two names
        ("cuda", {"cuda", "cpu"}, "cuda"),
        ("cuda:1", {"cuda", "cuda:1"}, "cuda:1"),
    ],
)
def test_a_device_has_one_name(named, allowed, planned):
    from service.config import Limits
    from service.diagnostics.plan import plan_run
    from service.schemas.requests import DiagnosticsRequest

    request = DiagnosticsRequest.model_validate({**LESSON_REQUEST, "device": named})
    default = "cpu" if "cuda" not in allowed else "cuda"
    plan = plan_run(
        request,
        default_device=default,
        allowed_devices=allowed,
        default_dtype="float32",
        limits=Limits(),
    )
    assert plan.device == planned


def test_auto_and_refused_device_names_over_http(client):
    report = client.post(URL, json={**LESSON_REQUEST, "device": "auto"}).json()
    assert report["provenance"]["device"] == "cpu"
    refused = client.post(URL, json={**LESSON_REQUEST, "device": "cuda:0"})
    assert refused.status_code == 422
    assert refused.json()["code"] == "unsupported_device"
