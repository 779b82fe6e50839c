"""Repeated requests reuse the initial model, and answer exactly as a fresh build does."""

import copy

from service.schemas.requests import LESSON_REQUEST

URL = "/v1/diagnostics"

BATCH_NORM_DROPOUT = {
    "model": {
        "kind": "sequential",
        "layers": [
            {"type": "linear", "out_features": 8},
            {"type": "batch_norm"},
            {"type": "dropout", "p": 0.5},
            {"type": "linear", "out_features": 2},
        ],
    },
    "input": {"shape": [6, 4], "distribution": "normal", "seed": 1},
    "target": {"shape": [6, 2], "distribution": "normal", "seed": 2},
    "seed": 9,
}


def without_timing(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "timing_ms"}


def test_cached_runs_equal_fresh_builds(make_client):
    cached = make_client()  # default cache
    fresh = make_client(model_cache_bytes=0)
    for body in (LESSON_REQUEST, BATCH_NORM_DROPOUT):
        expected = without_timing(fresh.post(URL, json=body).json())
        # Training mode updates batch-norm statistics and draws dropout masks: the cached
        # module must come back to its initial state and its generator to its initial place.
        for _ in range(3):
            assert without_timing(cached.post(URL, json=body).json()) == expected


def test_repeated_requests_hit_the_cache(make_client):
    client = make_client()
    for _ in range(3):
        client.post(URL, json=LESSON_REQUEST)
    other = copy.deepcopy(LESSON_REQUEST) | {"seed": 5}
    client.post(URL, json=other)
    cache = client.get("/readyz").json()["model_cache"]
    assert cache["hits"] == 2 and cache["misses"] == 2


def test_cache_respects_its_byte_budget(make_client):
    # The lesson's model holds 52 float32 numbers (208 bytes): 300 bytes keep one model.
    client = make_client(model_cache_bytes=300)
    for seed in (1, 2, 1):
        client.post(URL, json=copy.deepcopy(LESSON_REQUEST) | {"seed": seed})
    cache = client.get("/readyz").json()["model_cache"]
    assert cache["hits"] == 0 and cache["misses"] == 3  # seed 2 evicted seed 1
    assert cache["idle_bytes"] == 208
