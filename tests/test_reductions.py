"""The native statistics kernel equals plain reductions, falls back where it cannot answer,
and is what the service runs."""

import math
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from service.diagnostics import reductions as reductions_module
from service.diagnostics.reductions import Reductions, openmp_runtimes
from service.diagnostics.statistics import summarise
from service.schemas.requests import LESSON_REQUEST
from tests.test_statistics import assert_equal_to_plain_reductions, assert_same_stats, tensors

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="the kernel needs gcc")


@pytest.fixture(scope="module")
def native() -> Reductions:
    if shutil.which("gcc") is None:
        pytest.skip("the kernel needs gcc")
    reductions = Reductions(fused=True)
    reductions.warm_up()
    assert reductions.state == "ready"
    return reductions


def strict(reductions: Reductions, parallel: bool = True) -> Callable:
    """`tensor_rows` that fails where it would leave the work to the eager path."""

    def rows(tensors: list[torch.Tensor]) -> np.ndarray:
        answer = reductions.tensor_rows(tensors, parallel)
        assert answer is not None, "the native kernel did not answer"
        return answer

    return rows


def odd_tensors() -> list[torch.Tensor]:
    """What `tensors()` lacks: views that are not contiguous, other dtypes, no elements,
    sizes around the kernel's pieces (32,768) and blocks (1,024), -inf with +inf."""
    g = torch.Generator().manual_seed(7)
    matrix = torch.randn(300, 200, generator=g)
    infinities = torch.randn(5000, generator=g)
    infinities[[3, 4000]] = torch.tensor([float("-inf"), float("inf")])
    return [
        matrix.t(),
        matrix[:, ::3],
        torch.randn(5000, generator=g).double(),
        torch.randn(70_001, generator=g).bfloat16(),
        torch.randn(3000, generator=g).half(),
        torch.empty(0),
        *(torch.randn(n, generator=g) for n in (1023, 1025, 32_767, 32_768, 32_769, 65_537)),
        infinities,
    ]


@pytest.mark.parametrize("parallel", [True, False])
def test_native_rows_equal_plain_reductions(native, parallel):
    inputs = [*tensors(), *odd_tensors(), torch._neg_view(torch.arange(1.0, 6.0))]
    results = summarise(inputs, strict(native, parallel))
    assert_equal_to_plain_reductions(inputs[:-9], results[:-9])
    assert results[-9]["numel"] == 0 and results[-9]["mean"] is None  # no elements
    assert_equal_to_plain_reductions(inputs[-8:], results[-8:])  # the last one negated


def test_native_and_eager_paths_agree(native):
    inputs = [*tensors(), torch.randn(3_000_000, generator=torch.Generator().manual_seed(4))]
    for got, want in zip(summarise(inputs, strict(native)), summarise(inputs), strict=True):
        assert_same_stats(got, want)


def test_sums_keep_vanishing_exploding_and_cancelling_values(native):
    """Sums in double, to 1e-12: the regimes a float-summing kernel gets wrong (one was tried,
    1.4x faster alone and no faster in the service, and not kept): squares that float
    underflows or overflows, also after a stretch of zeros (a dead ReLU unit's row of its
    weight's gradient), one value far beyond the rest, and a sum that cancels exactly."""
    g = torch.Generator().manual_seed(11)
    base = torch.randn(100_000, generator=g)
    one_huge = base.clone()
    one_huge[40_000] = 2.0**70
    zeros = torch.zeros(300)
    inputs = [
        base * 1e-30,  # float32 squares underflow to 0
        base * 1e25,  # float32 squares overflow to inf
        one_huge,
        torch.cat([zeros, base * 1e-30]),
        torch.cat([zeros, base * 1e25]),
        torch.cat([base, -base.flip(0)]),  # the sum is 0
        base,
    ]
    for parallel in (True, False):
        rows = strict(native, parallel)(inputs)
        for row, t in zip(rows, inputs, strict=True):
            d = t.double()
            l1 = d.abs().sum().item()
            assert math.isclose(row[0], l1, rel_tol=1e-12)
            assert math.isclose(row[1], d.square().sum().item(), rel_tol=1e-12)
            assert abs(row[2] - d.sum().item()) <= 1e-12 * l1


@pytest.mark.parametrize("path", ["native", "eager"])
def test_known_rows_are_used_and_the_rest_computed(native, path):
    rows = strict(native) if path == "native" else None
    inputs = tensors()
    known = {id(inputs[2]): native.side_rows(inputs[2]), id(inputs[7]): native.side_rows(inputs[7])}
    assert_equal_to_plain_reductions(inputs, summarise(inputs, rows, known))
    # Rows given as known are taken as they are, not recomputed.
    known[id(inputs[2])] = native.side_rows(inputs[0])
    got = summarise(inputs, rows, known)[2]
    assert got == summarise([inputs[0]], strict(native))[0]


def test_side_rows_refuse_what_needs_a_torch_op(native):
    """Side threads must not start an OpenMP team: no cast, no copy, only the kernel."""
    values = torch.randn(300, 200, generator=torch.Generator().manual_seed(9))
    assert native.side_rows(values.bfloat16()) is None  # would need a cast
    assert native.side_rows(values.t()) is None  # would need a copy
    row = native.side_rows(values)
    assert row is not None
    assert summarise([values], native.tensor_rows, {id(values): row}) == summarise(
        [values], native.tensor_rows
    )


def test_unsupported_inputs_fall_back_to_eager(native):
    assert Reductions(fused=False).tensor_rows([torch.ones(3)]) is None
    assert native.tensor_rows([torch.ones(3), torch.arange(3)]) is None  # integers
    assert native.tensor_rows([torch.ones(3, dtype=torch.complex64)]) is None
    inputs = [torch.arange(5), torch.randn(5)]
    assert summarise(inputs, native.tensor_rows) == summarise(inputs)


@pytest.fixture
def no_gcc(monkeypatch):
    def no_compiler() -> None:
        raise RuntimeError("no gcc on PATH")

    monkeypatch.setattr(reductions_module, "_compile", no_compiler)


def test_without_gcc_the_service_answers_on_the_eager_kernels(make_client, no_gcc):
    client = make_client()
    assert client.get("/readyz").json()["model_cache"]["fused_statistics"] == "unavailable"
    report = client.post("/v1/diagnostics", json=LESSON_REQUEST)
    assert report.status_code == 200
    assert report.json()["parameters"][0]["grad"]["numel"] == 9


def test_a_failed_compile_leaves_the_eager_kernels(no_gcc):
    reductions = Reductions(fused=True)
    reductions.warm_up()
    assert reductions.state == "unavailable"
    assert reductions.tensor_rows([torch.ones(3)]) is None
    assert reductions.side_rows(torch.ones(3)) is None


def test_one_openmp_runtime_in_the_process(native):
    """The kernel's OpenMP calls go to torch's libgomp, not a second runtime with threads
    of its own."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("no /proc")
    assert len(openmp_runtimes()) == 1, openmp_runtimes()
    assert not native._serial_only


@needs_gcc
def test_the_service_runs_the_native_kernel(make_client, monkeypatch):
    calls = []
    original = Reductions.tensor_rows

    def counted(self, tensors, parallel=True):
        rows = original(self, tensors, parallel)
        calls.append(rows is not None)
        return rows

    monkeypatch.setattr(Reductions, "tensor_rows", counted)
    client = make_client(fused_statistics=True)
    assert client.get("/readyz").json()["model_cache"]["fused_statistics"] == "ready"
    request = {
        "model": {"kind": "mlp", "layer_sizes": [4, 8, 2], "activation": "relu"},
        "input": {"shape": [3, 4], "distribution": "normal", "seed": 1},
        "loss": "sum",
    }
    assert client.post("/v1/diagnostics", json=request).status_code == 200
    assert calls and all(calls)
    off = make_client(fused_statistics=False)
    assert off.get("/readyz").json()["model_cache"]["fused_statistics"] == "off"


def test_warm_up_runs_on_a_thread_that_ends(make_client, monkeypatch):
    """The warm-up's parallel ops start an OpenMP team for its thread; on a thread that
    lives on (a pool's), that second team made every later backward pass about twice as
    slow (measured: the depth-32 MLP, 6-9 ms against 11-18 ms)."""
    threads = []
    original = Reductions.warm_up

    def recorded(self):
        threads.append(threading.current_thread())
        original(self)

    monkeypatch.setattr(Reductions, "warm_up", recorded)
    make_client()
    assert len(threads) == 1
    assert threads[0] is not threading.main_thread() and not threads[0].is_alive()


def test_serial_calls_start_no_openmp_threads(native):
    """A thread that enters an OpenMP parallel region gets a team of its own; serial calls
    (side threads) must start none, parallel ones exactly torch's intra-op count."""
    tasks = Path("/proc/self/task")
    if not tasks.exists():
        pytest.skip("no /proc")
    large = [torch.randn(1 << 18, generator=torch.Generator().manual_seed(8))]
    started, expected = {}, {}

    def probe(parallel: bool) -> None:
        # The count the calling thread sees, which the kernel uses: in the whole suite, after
        # other tests' workers had set theirs, the main thread's differed from a new one's.
        expected[parallel] = torch.get_num_threads() - 1 if parallel else 0
        before = len(list(tasks.iterdir()))
        native.tensor_rows(large, parallel)
        started[parallel] = len(list(tasks.iterdir())) - before

    for parallel in (False, True):  # each on a new thread, so without a team yet
        thread = threading.Thread(target=probe, args=(parallel,))
        thread.start()
        thread.join()
    if expected[True] == 0:
        pytest.skip("torch runs one thread here: no team to count")
    assert started == expected
