"""The fused statistics kernel agrees with the eager one, and the service uses it."""

import shutil

import pytest
import torch

from service.diagnostics.reductions import Reductions
from service.diagnostics.statistics import summarise
from tests.test_statistics import assert_same_stats, tensors

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="torch.compile needs a C++ compiler")  # fmt: skip


@pytest.fixture(scope="module")
def fused() -> Reductions:
    reductions = Reductions(fused=True)
    reductions.warm_up()
    assert reductions.state == "ready"
    return reductions


def test_fused_rows_equal_eager_rows(fused):
    inputs = [*tensors(), torch.randn(3_000_000, generator=torch.Generator().manual_seed(4))]
    for got, want in zip(summarise(inputs, fused.rows), summarise(inputs), strict=True):
        assert_same_stats(got, want)


def test_disabled_or_unsupported_inputs_fall_back_to_eager(fused, monkeypatch):
    off = Reductions(fused=False)
    off.warm_up()
    assert off.state == "off"

    def must_not_run(x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the compiled kernel ran on an input it was not compiled for")

    monkeypatch.setattr(fused, "_kernel", must_not_run)
    values = torch.randn(100_000, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    # float64: the kernel was compiled for float32 only
    assert summarise([values], fused.rows) == summarise([values])
    with pytest.raises(AssertionError, match="compiled kernel ran"):
        summarise([values.float()], fused.rows)  # float32: the kernel is used


def test_service_reports_the_fused_kernel(make_client):
    client = make_client(fused_statistics=True)
    import time

    deadline = time.monotonic() + 300
    while client.get("/readyz").json()["model_cache"]["fused_statistics"] == "warming":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert client.get("/readyz").json()["model_cache"]["fused_statistics"] == "ready"


def test_side_rows_are_serial_kernel_rows_or_none(fused):
    x = torch.randn(1, 200_003, generator=torch.Generator().manual_seed(6))
    side, run = fused.side_rows(x, torch.float64), fused.rows(x, torch.float64)
    assert side is not None and torch.allclose(side, run, rtol=1e-5)
    # No eager fallback on a side thread: where the serial kernel cannot answer, None.
    assert fused.side_rows(x.double(), torch.float64) is None
    assert Reductions(fused=False).side_rows(x, torch.float64) is None
