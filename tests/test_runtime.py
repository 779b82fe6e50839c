"""The process-wide rules of `service.runtime`: only run threads enter OpenMP; malloc
arenas reach glibc where there is one; the objects of a process's first start-up are frozen
out of the garbage collector's view, once."""

import ctypes.util
import json
import platform
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from service import runtime as runtime_module
from service.diagnostics.plan import plan_run
from service.diagnostics.stats.native import load
from service.runtime import Runtime, limit_malloc_arenas
from service.schemas.requests import DiagnosticsRequest
from tests.conftest import make_settings

TASKS = Path("/proc/self/task")
needs_proc = pytest.mark.skipif(not TASKS.exists(), reason="counts threads in /proc")


def thread_count() -> int:
    return len(list(TASKS.iterdir()))


def _mlp_plan(seed: int, settings):
    request = DiagnosticsRequest.model_validate(
        {
            "model": {"kind": "mlp", "layer_sizes": [256, 256, 256, 256], "activation": "relu"},
            "input": {"shape": [8, 256], "distribution": "normal", "seed": 1},
            "loss": "sum",
            "seed": seed,
        }
    )
    return plan_run(
        request,
        default_device="cpu",
        allowed_devices={"cpu"},
        default_dtype="float32",
        limits=settings.limits,
    )


@needs_proc
def test_the_side_thread_starts_no_openmp_team(monkeypatch):
    """A cold build hashes and summarises its weights on the side thread while it draws the
    next ones. Once the run thread has its OpenMP team and the side thread exists, a cold
    build must start no thread at all: a side thread that ran a parallel op would have
    started a team of its own (torch's intra-op count less one)."""
    if torch.get_num_threads() < 2 and (len(runtime_module.os.sched_getaffinity(0)) < 2):
        pytest.skip("one core: an OpenMP team has no threads to count")
    settings = make_settings(concurrency=1, torch_threads=2, model_cache_bytes=0, gc_freeze=False)
    runtime = Runtime.bootstrap(settings)
    side_rows = []
    original = runtime.statistics.side_row
    monkeypatch.setattr(
        runtime.statistics, "side_row", lambda t: side_rows.append(1) or original(t)
    )

    def build(seed: int) -> int:
        model = runtime.models.checkout(_mlp_plan(seed, settings), threading.Event())
        runtime.models.checkin(model)
        return thread_count()

    try:
        runtime.run_threads.submit(lambda: torch.randn(1 << 20).abs().sum()).result()
        runtime.side_thread.submit(lambda: None).result()
        before = thread_count()
        after = runtime.run_threads.submit(build, 1).result()
    finally:
        runtime.close()
    assert side_rows, "the side thread summarised no weight"
    assert after == before


def test_the_kernel_is_checked_on_a_thread_that_ends(monkeypatch):
    """The check's parallel ops start an OpenMP team for its thread; on a thread that lives
    on, that second team slows every run."""
    threads = []

    def recorded():
        threads.append(threading.current_thread())
        return load()

    monkeypatch.setattr(runtime_module, "load", recorded)
    runtime_module.load_statistics(True)
    assert len(threads) == 1
    assert threads[0] is not threading.main_thread() and not threads[0].is_alive()


@needs_proc
def test_serial_kernel_calls_start_no_openmp_threads():
    """Serial calls (the side thread's) start no thread; parallel ones exactly torch's
    intra-op count less the caller."""
    kernel, state = load()
    assert kernel is not None, state
    large = [torch.randn(1 << 18, generator=torch.Generator().manual_seed(8))]
    started, expected = {}, {}

    def probe(parallel: bool) -> None:
        expected[parallel] = torch.get_num_threads() - 1 if parallel else 0
        before = thread_count()
        kernel.rows(large, parallel)
        started[parallel] = thread_count() - before

    for parallel in (False, True):  # each on a new thread, so without a team yet
        thread = threading.Thread(target=probe, args=(parallel,))
        thread.start()
        thread.join()
    if expected[True] == 0:
        pytest.skip("torch runs one thread here: no team to count")
    assert started == expected


def test_zero_leaves_glibc_alone():
    assert limit_malloc_arenas(0) is False


@pytest.mark.skipif(
    platform.system() != "Linux"
    or platform.libc_ver()[0] != "glibc"
    or not ctypes.util.find_library("c"),
    reason="glibc only",
)
def test_glibc_accepts_the_limit():
    assert limit_malloc_arenas(1) is True


# In a process of its own: the collector's state is the process's.
FREEZE_PROBE = """
import gc, json
from fastapi.testclient import TestClient
from service.main import create_app
from tests.conftest import make_settings
counts = []
for freeze in (False, True, True):
    with TestClient(create_app(make_settings(gc_freeze=freeze))) as client:
        assert client.get("/healthz").status_code == 200
        counts.append(gc.get_freeze_count())
    counts.append(gc.get_freeze_count())
print(json.dumps(counts))
"""


def test_start_up_objects_are_frozen_once_per_process():
    done = subprocess.run(
        [sys.executable, "-c", FREEZE_PROBE],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    off, off_after, on, on_after, again, again_after = json.loads(done.stdout.splitlines()[-1])
    assert off == off_after == 0  # GRADIAG_GC_FREEZE=false
    assert on > 10_000  # torch, FastAPI, pydantic, the app
    # Frozen objects leave the count only when they are freed: a thaw would empty it, a
    # second freeze would add the second app's objects.
    assert on_after > on // 2  # for good, not thawed when the app stops
    assert again_after <= again <= on_after  # a second app of the process freezes nothing
