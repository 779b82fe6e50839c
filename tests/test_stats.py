"""The statistics paths: the reference equals plain float64 reductions; the native kernel and
the tiled path equal the reference; `summarise` picks a path and says which."""

import math

import numpy as np
import pytest
import torch

from service.diagnostics.stats import Statistics, native, tiled
from service.diagnostics.stats.native import NativeKernel, load, openmp_runtimes
from service.diagnostics.stats.reference import reference_rows
from service.diagnostics.stats.rows import finish
from service.schemas.requests import LESSON_REQUEST


def expected(t: torch.Tensor) -> dict:
    """Plain float64 reductions of one tensor, written independently of the service."""
    d = t.double()
    finite = torch.isfinite(d).all().item()
    values = {
        "mean_abs": d.abs().mean().item(),
        "l2_norm": d.norm().item(),
        "rms": d.pow(2).mean().sqrt().item(),
        "max_abs": d.abs().max().item(),
        "mean": d.mean().item(),
        "std": d.std(correction=0).item(),
        "min": d.min().item(),
        "max": d.max().item(),
    }
    if not finite:
        values = {k: (v if math.isfinite(v) else None) for k, v in values.items()}
    values["zero_fraction"] = (d == 0).double().mean().item()
    values["nonfinite_count"] = int((~torch.isfinite(d)).sum())
    values["numel"] = d.numel()
    return values


def tensors() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    relu = torch.relu(torch.randn(300, 300, generator=g))
    with_nan = torch.randn(200_000, generator=g)
    with_nan[17] = float("nan")
    with_inf = torch.randn(5, generator=g)
    with_inf[2] = float("inf")
    return [
        torch.randn(3, 3, generator=g),
        torch.zeros(4),
        relu,
        with_nan,
        with_inf,
        torch.full((70_000,), 3.0e38) * 10,  # overflows to inf: the sum is not finite
        torch.tensor([2.5]),
        # Millions of float32 values: float32 accumulation over them drifts by 1e-4.
        torch.rand(3_000_000, generator=g) + 0.5,
        torch.randn(100, 60, generator=g),
        torch.zeros(60, 100),
        with_nan[:6000].reshape(6000, 1) * 2,
    ]


def odd_tensors() -> list[torch.Tensor]:
    """Views that are not contiguous, other dtypes, sizes around the kernel's pieces (32,768)
    and blocks (1,024), -inf with +inf."""
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
        *(torch.randn(n, generator=g) for n in (1023, 1025, 32_767, 32_768, 32_769, 65_537)),
        infinities,
        torch._neg_view(torch.arange(1.0, 6.0)),
    ]


def assert_same_stats(got: dict, want: dict) -> None:
    """Counts exactly; the rest to float rounding: 1e-5 relative, except the mean, which can
    be zero in exact arithmetic and is compared on the scale of the mean absolute value."""
    assert got.keys() == want.keys()
    for key, value in want.items():
        if value is None or got[key] is None or key in ("numel", "nonfinite_count"):
            assert got[key] == value, (key, got[key], value)
        else:
            floor = 1e-5 * want["mean_abs"] if key == "mean" and want["mean_abs"] else 1e-9
            assert math.isclose(got[key], value, rel_tol=1e-5, abs_tol=floor), (
                key,
                got[key],
                value,
            )


def assert_equal_to_plain_reductions(inputs: list[torch.Tensor], results: list) -> None:
    for got, t in zip(results, inputs, strict=True):
        assert_same_stats(got, expected(t))


def reference_stats(inputs: list[torch.Tensor]) -> list:
    return finish(inputs, reference_rows(inputs))


@pytest.fixture(scope="module")
def kernel() -> NativeKernel:
    loaded, state = load()
    assert loaded is not None and state == "ready", f"the kernel is built by make install: {state}"
    return loaded


def strict_rows(kernel: NativeKernel, inputs: list[torch.Tensor], parallel: bool = True):
    rows = kernel.rows(inputs, parallel)
    assert rows is not None, "the native kernel did not answer"
    return rows


# The reference, the oracle of the other paths, against independent float64 reductions.


def test_reference_equals_plain_reductions():
    inputs = [*tensors(), *odd_tensors()]
    assert_equal_to_plain_reductions(inputs, reference_stats(inputs))


def test_reference_of_bfloat16_float64_and_empty_tensors():
    values = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    inputs = [values.bfloat16(), values.double(), torch.empty(0), torch.empty(0, 4)]
    results = reference_stats(inputs)
    assert_equal_to_plain_reductions(inputs[:2], results[:2])
    for empty in results[2:]:
        assert empty["numel"] == 0 and empty["nonfinite_count"] == 0
        assert all(empty[k] is None for k in ("mean_abs", "mean", "std", "min", "max"))


def test_no_tensors():
    assert reference_stats([]) == []
    assert Statistics(None, "off").summarise([]).stats == []


# The native kernel.


@pytest.mark.parametrize("parallel", [True, False])
def test_native_rows_equal_the_reference(kernel, parallel):
    inputs = [*tensors(), *odd_tensors(), torch.empty(0)]
    got = finish(inputs, strict_rows(kernel, inputs, parallel))
    for g, w in zip(got, reference_stats(inputs), strict=True):
        assert_same_stats(g, w)


def test_native_sums_keep_vanishing_exploding_and_cancelling_values(kernel):
    """Sums in double, to 1e-12, where float32 sums fail: squares that float underflows or
    overflows, also after a stretch of zeros, one value far beyond the rest, and a sum that
    cancels exactly."""
    g = torch.Generator().manual_seed(11)
    base = torch.randn(100_000, generator=g)
    one_huge = base.clone()
    one_huge[40_000] = 2.0**70
    zeros = torch.zeros(300)
    inputs = [
        base * 1e-30,
        base * 1e25,
        one_huge,
        torch.cat([zeros, base * 1e-30]),
        torch.cat([zeros, base * 1e25]),
        torch.cat([base, -base.flip(0)]),
        base,
    ]
    for parallel in (True, False):
        rows = strict_rows(kernel, inputs, parallel)
        for row, t in zip(rows, inputs, strict=True):
            d = t.double()
            l1 = d.abs().sum().item()
            assert math.isclose(row[0], l1, rel_tol=1e-12)
            assert math.isclose(row[1], d.square().sum().item(), rel_tol=1e-12)
            assert abs(row[2] - d.sum().item()) <= 1e-12 * l1


def test_known_rows_are_used_and_the_rest_computed(kernel):
    statistics = Statistics(kernel, "ready")
    inputs = tensors()
    known = {id(inputs[2]): kernel.side_row(inputs[2]), id(inputs[7]): kernel.side_row(inputs[7])}
    summary = statistics.summarise(inputs, known)
    assert summary.path == "native"
    assert_equal_to_plain_reductions(inputs, summary.stats)
    # Rows given as known are taken as they are, not recomputed.
    known[id(inputs[2])] = kernel.side_row(inputs[0])
    assert statistics.summarise(inputs, known).stats[2] == statistics.summarise([inputs[0]])[0][0]


def test_side_rows_refuse_what_needs_a_torch_op(kernel):
    """Side threads must not start an OpenMP team: no cast, no copy, only the kernel."""
    values = torch.randn(300, 200, generator=torch.Generator().manual_seed(9))
    assert kernel.side_row(values.bfloat16()) is None  # would need a cast
    assert kernel.side_row(values.t()) is None  # would need a copy
    row = kernel.side_row(values)
    assert row is not None
    np.testing.assert_array_equal(row, strict_rows(kernel, [values])[0])


def test_what_the_kernel_cannot_read_goes_to_the_reference(kernel):
    assert kernel.rows([torch.ones(3), torch.arange(3)]) is None  # integers
    assert kernel.rows([torch.ones(3, dtype=torch.complex64)]) is None
    inputs = [torch.arange(5), torch.randn(5)]
    summary = Statistics(kernel, "ready").summarise(inputs)
    assert summary.path == "reference"
    assert summary.stats == reference_stats(inputs)


def test_one_openmp_runtime_in_the_process(kernel):
    """The kernel's OpenMP calls go to torch's libgomp, not a second runtime."""
    if not openmp_runtimes():
        pytest.skip("no /proc/self/maps")
    assert len(openmp_runtimes()) == 1, openmp_runtimes()
    assert not kernel.serial_only


# The accelerators' path, run here on the CPU: the default layout; short rows, so that most
# tensors span several rows and most last rows are padded; one matrix per tensor.
@pytest.mark.parametrize(("tile", "elements"), [(1 << 12, 1 << 26), (7, 1 << 26), (1 << 12, 1)])
def test_tiled_rows_equal_the_reference(monkeypatch, tile, elements):
    monkeypatch.setattr(tiled, "TILE", tile)
    monkeypatch.setattr(tiled, "TILED_ELEMENTS", elements)
    inputs = [*tensors(), -torch.arange(1.0, 10.0), torch.arange(1.0, 10.0), torch.empty(0)]
    got = finish(inputs, tiled.tiled_rows(inputs))
    for g, w in zip(got, reference_stats(inputs), strict=True):
        assert_same_stats(g, w)


def test_tiled_rows_of_bfloat16_and_mixed_dtypes():
    g = torch.Generator().manual_seed(2)
    inputs = [torch.randn(5000, generator=g).bfloat16(), torch.randn(3, generator=g).double()]
    assert_equal_to_plain_reductions(inputs, finish(inputs, tiled.tiled_rows(inputs)))


# The path the service runs, and the one it falls back to.


def test_the_service_runs_the_native_kernel(make_client):
    client = make_client()
    assert client.get("/readyz").json()["statistics_kernel"] == "ready"
    report = client.post("/v1/diagnostics", json=LESSON_REQUEST).json()
    assert report["provenance"]["statistics"] == "native"
    off = make_client(native_statistics=False)
    assert off.get("/readyz").json()["statistics_kernel"] == "off"
    report_off = off.post("/v1/diagnostics", json=LESSON_REQUEST).json()
    assert report_off["provenance"]["statistics"] == "reference"
    for a, b in zip(report["parameters"], report_off["parameters"], strict=True):
        assert_same_stats(a["grad"], b["grad"])


def test_without_the_extension_the_reference_answers(make_client, monkeypatch):
    monkeypatch.setattr(native, "EXTENSION", "service.diagnostics.stats._not_built")
    client = make_client()
    assert client.get("/readyz").json()["statistics_kernel"].startswith("not built")
    report = client.post("/v1/diagnostics", json=LESSON_REQUEST)
    assert report.status_code == 200
    assert report.json()["provenance"]["statistics"] == "reference"
    assert report.json()["parameters"][0]["grad"]["numel"] == 9
