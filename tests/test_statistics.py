"""Batched statistics equal per-tensor torch reductions, on both paths, NaN/Inf included."""

import math

import pytest
import torch

from service.diagnostics import statistics, tiled
from service.diagnostics.statistics import summarise


def expected(t: torch.Tensor) -> dict:
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
    relu = torch.relu(torch.randn(300, 300, generator=g))  # 90k elements: the large path
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
        # Equal sizes, reduced together as the rows of one stacked matrix.
        torch.randn(100, 60, generator=g),
        torch.zeros(60, 100),
        with_nan[:6000].reshape(6000, 1) * 2,
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


def assert_equal_to_plain_reductions(inputs: list[torch.Tensor], results: list[dict]) -> None:
    for got, t in zip(results, inputs, strict=True):
        assert_same_stats(got, expected(t))


@pytest.mark.parametrize("limit", [1 << 16, 0, 1 << 30])  # mixed, all large, all small
def test_summarise_equals_plain_reductions(monkeypatch, limit):
    monkeypatch.setattr(statistics, "SEGMENT_LIMIT", limit)
    inputs = tensors()
    assert_equal_to_plain_reductions(inputs, summarise(inputs))


def test_stacks_in_reused_memory(monkeypatch):
    # Stacks of two rows at most: several stacks of each size come out of one buffer, so a
    # stack made before the previous one was reduced would overwrite it.
    monkeypatch.setattr(statistics, "SEGMENT_LIMIT", 0)
    monkeypatch.setattr(statistics, "STACK_ELEMENTS", 2 * 6000)
    g = torch.Generator().manual_seed(3)
    inputs = [*tensors(), *(torch.randn(6000, generator=g) * i for i in range(5))]
    inputs += [t.double() for t in inputs[-3:]]
    scratch = statistics.Scratch()
    for _ in range(2):
        assert_equal_to_plain_reductions(inputs, summarise(inputs, stack=scratch.stack))


# The accelerators' path, run here on the CPU: the default layout; short rows, so that most
# tensors span several rows and most last rows are padded; one matrix per tensor.
@pytest.mark.parametrize(("tile", "elements"), [(1 << 12, 1 << 26), (7, 1 << 26), (1 << 12, 1)])
def test_tiled_summary_equals_plain_reductions(monkeypatch, tile, elements):
    monkeypatch.setattr(tiled, "TILE", tile)
    monkeypatch.setattr(tiled, "TILED_ELEMENTS", elements)
    inputs = [*tensors(), -torch.arange(1.0, 10.0), torch.arange(1.0, 10.0), torch.empty(0)]
    results = tiled.summarise_tiled(inputs)
    assert_equal_to_plain_reductions(inputs[:-1], results[:-1])
    assert results[-1]["numel"] == 0 and results[-1]["mean"] is None


def test_tiled_summary_of_bfloat16_and_mixed_dtypes():
    g = torch.Generator().manual_seed(2)
    inputs = [torch.randn(5000, generator=g).bfloat16(), torch.randn(3, generator=g).double()]
    assert_equal_to_plain_reductions(inputs, tiled.summarise_tiled(inputs))


def test_bfloat16_and_float64_tensors():
    g = torch.Generator().manual_seed(1)
    values = torch.randn(1000, generator=g)
    inputs = [values.to(dtype) for dtype in (torch.bfloat16, torch.float64)]
    assert_equal_to_plain_reductions(inputs, summarise(inputs))


def test_tensors_without_elements():
    inputs = [torch.randn(3), torch.empty(0), torch.ones(70_000), torch.empty(0, 4)]
    results = summarise(inputs)
    assert_equal_to_plain_reductions(inputs[::2], results[::2])
    for empty in results[1::2]:
        assert empty["numel"] == 0 and empty["nonfinite_count"] == 0
        assert all(empty[k] is None for k in ("mean_abs", "mean", "std", "min", "max"))


def test_empty_list():
    assert summarise([]) == []
