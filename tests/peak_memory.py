"""`python -m tests.peak_memory REQUEST_JSON`: run one diagnostics or compare request in a
fresh process (model cache off) and print the growth of its peak RSS and the service's
estimate, as JSON. tests/test_estimates.py calls it: only a process of its own has a
clean peak."""

import json
import math
import os
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from service.diagnostics.plan import peak_bytes, plan_run
from service.main import create_app
from service.schemas.requests import LESSON_REQUEST, DiagnosticsRequest
from tests.conftest import make_settings


def _peak_rss() -> int:
    """This program's peak RSS: VmHWM, the high-water mark of its own address space. Not
    ru_maxrss, which keeps the peak of the process before exec: the forked copy of a parent
    (pytest, grown to gigabytes) would count as this run's growth."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(body: dict) -> None:
    settings = make_settings(model_cache_bytes=0, limits={"max_flops": 10**15})
    base = body.get("base", body)
    plan = plan_run(
        DiagnosticsRequest.model_validate(base),
        default_device="cpu",
        allowed_devices={"cpu"},
        default_dtype="float32",
        limits=settings.limits,
    )
    target = math.prod(plan.target_shape) if plan.target_shape else 0
    elements = math.prod(plan.input_shape) + target
    estimate = peak_bytes(plan.model, elements, plan.dtype)
    route = "/v1/diagnostics/compare" if "variants" in body else "/v1/diagnostics"
    with TestClient(create_app(settings)) as client:
        client.post("/v1/diagnostics", json=LESSON_REQUEST)  # start-up allocations first
        # The footprint now, not the peak so far: a transient of the start-up above it would
        # hide part of the run's peak.
        before = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        status = client.post(route, json=body).status_code
        after = _peak_rss()
    print(json.dumps({"status": status, "grown": after - before, "estimate": estimate}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
