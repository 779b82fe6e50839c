"""Repeated requests reuse the initial model, and answer exactly as a fresh build does; the
cache is bounded by its entries' real footprint and by their number, and a lookup does not
walk it."""

import copy
import gc
import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

import pytest

from service.config import Limits
from service.diagnostics import model_cache
from service.diagnostics.model_cache import ModelCache
from service.diagnostics.plan import RunPlan, plan_run
from service.runtime import load_statistics
from service.schemas.requests import LESSON_REQUEST, DiagnosticsRequest

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


# The lesson's model: 52 float32 numbers in 10 tensors, 17 modules, 5 reported layers.
LESSON_FOOTPRINT = (
    52 * 4
    + model_cache.ENTRY_OVERHEAD
    + 17 * model_cache.MODULE_OVERHEAD
    + 10 * model_cache.TENSOR_OVERHEAD
    + 5 * model_cache.LAYER_OVERHEAD
)


@pytest.mark.parametrize(
    "bound", [{"model_cache_bytes": LESSON_FOOTPRINT * 3 // 2}, {"model_cache_entries": 1}]
)
def test_cache_keeps_one_lesson_within_either_bound(make_client, bound):
    client = make_client(**bound)
    for seed in (1, 2, 1):
        client.post(URL, json=copy.deepcopy(LESSON_REQUEST) | {"seed": seed})
    cache = client.get("/readyz").json()["model_cache"]
    assert cache["hits"] == 0 and cache["misses"] == 3  # seed 2 evicted seed 1
    assert cache["idle_bytes"] == LESSON_FOOTPRINT and cache["idle_entries"] == 1


def lesson_plan(seed: int) -> RunPlan:
    request = DiagnosticsRequest.model_validate(LESSON_REQUEST | {"seed": seed})
    return plan_run(
        request,
        default_device="cpu",
        allowed_devices={"cpu"},
        default_dtype="float32",
        limits=Limits(),
    )


@pytest.fixture
def make_cache() -> Iterator[Any]:
    """ModelCache(max_bytes, max_entries) with the real statistics and a side thread."""
    side = ThreadPoolExecutor(1)
    statistics = load_statistics(True)
    yield lambda max_bytes, max_entries: ModelCache(max_bytes, max_entries, statistics, side)
    side.shutdown()


def lines_run(call: Any) -> int:
    """How many lines of Python `call()` executes on this thread."""
    count = 0

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        count += event == "line"
        return trace

    sys.settrace(trace)
    try:
        call()
    finally:
        sys.settrace(None)
    return count


def test_a_hit_does_the_same_work_whatever_the_cache_holds(make_cache):
    # A structural stand-in for "a cached request's latency does not grow with the cache":
    # the old lookup walked every idle entry, and eviction summed all their sizes.
    cache, cancel = make_cache(1 << 40, 1 << 20), threading.Event()
    plans = [lesson_plan(seed) for seed in range(1000)]

    def hit(plan: RunPlan) -> None:
        cache.checkin(cache.checkout(plan, cancel))

    for plan in plans[:10]:
        hit(plan)
    few = lines_run(lambda: hit(plans[9]))  # the newest key: the far end of a walk
    for plan in plans[10:]:
        hit(plan)
    assert cache.idle_entries == 1000
    assert lines_run(lambda: hit(plans[999])) == few
    assert cache.hits == 2


def rss() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow  # 20,000 builds: 60-90 s on a 2-core machine
def test_distinct_seeds_grow_memory_by_at_most_the_budget(make_cache):
    # The cache counted parameters only, far below what an entry costs (docs/performance.md).
    budget, entries, cancel = 8 << 20, 1024, threading.Event()
    warm = make_cache(0, 0)  # code paths, allocator pools and kernel, outside the budget
    for seed in range(10**6, 10**6 + 20):
        warm.checkin(warm.checkout(lesson_plan(seed), cancel))
    gc.collect()
    cache, before = make_cache(budget, entries), rss()
    for seed in range(20_000):
        cache.checkin(cache.checkout(lesson_plan(seed), cancel))
    gc.collect()
    assert cache.misses == 20_000
    assert cache.idle_bytes <= budget and cache.idle_entries <= entries
    # The slack covers the allocator's fragmentation and rounding.
    assert rss() - before <= budget + (4 << 20)
