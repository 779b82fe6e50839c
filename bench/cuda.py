"""`python -m bench.cuda`: gpt2-small on a GPU, the service (in-process, through the ASGI app)
against plain PyTorch on the same GPU, interleaved. Prints medians and ratios."""

import statistics
import sys
import time

import torch
from fastapi.testclient import TestClient

from bench.__main__ import _gpt_request
from bench.plain import gpt_cold_and_warm
from service.config import Settings
from service.main import create_app


def main(rounds: int = 3, warms: int = 5) -> None:
    settings = Settings(device="cuda", native_statistics=False)
    plain_cold, plain_warm, cold, warm, shares = [], [], [], [], []
    with TestClient(create_app(settings)) as client:
        client.post("/v1/diagnostics", json=_gpt_request(99))  # as warm as the plain side
        for rep in range(rounds):
            plain = gpt_cold_and_warm(100 + rep, warms, "cuda")
            plain_cold += plain["cold"]
            plain_warm += plain["warm"]
            t = time.perf_counter()
            client.post("/v1/diagnostics", json=_gpt_request(100 + rep)).raise_for_status()
            cold.append(time.perf_counter() - t)
            for _ in range(warms):
                t = time.perf_counter()
                report = client.post("/v1/diagnostics", json=_gpt_request(100 + rep)).json()
                warm.append(time.perf_counter() - t)
                shares.append(report["timing_ms"]["statistics"] / report["timing_ms"]["total"])
    name = torch.cuda.get_device_name()
    print(f"{name}, torch {torch.__version__}, gpt2-small batch 1x128, medians")
    for what, a, b in [("cold", plain_cold, cold), ("warm", plain_warm, warm)]:
        a_ms, b_ms = statistics.median(a) * 1e3, statistics.median(b) * 1e3
        print(f"{what}: plain {a_ms:.1f} ms, gradiag {b_ms:.1f} ms, ratio {b_ms / a_ms:.2f}x")
    print(f"statistics share of a warm request: {statistics.median(shares):.1%}")
    print(f"last report timing_ms: {report['timing_ms']}")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
