"""`make bench`: the service and plain PyTorch measured in the same run, as ratios.

Parts (all by default; `python -m bench lesson gpt` picks some):
  lesson      the lesson's request over HTTP (keep-alive, sequential, warm) against the
              notebook's own code in-process; p50 and p99
  throughput  N concurrent clients against `make serve` defaults, and with one uvicorn
              worker per core
  scaling     MLP depth, width and batch: service compute against plain forward+backward
  gpt         gpt2-small, batch 1 x 128 tokens: cold and warm requests against plain
              build+forward+backward and forward+backward; peak memory of both processes
  celery      the lesson through the celery backend (a redis-server of its own, one worker)
              against the in-process backend, p50; a 24-run sweep with two worker processes
              against one
  curvature   one Hessian-vector product (MLP 4x512 at batch 64, gpt-tiny) against plain
              forward+backward and plain double backward; the precision check's float64
              pass against the run's passes (bench/curvature.py)
  per_sample  per-sample norms, noise and GSNR against plain forward+backward: an MLP of
              1.05M parameters at batch 64 and gpt-tiny at 8 x 64 tokens, the identities'
              path and the vmap path (bench/per_sample.py)
Every figure is a median over repetitions; the machine is noisy, so compare ratios.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

import torch

from bench import plain
from bench.curvature import curvature
from bench.per_sample import per_sample
from bench.server import ROOT, Client, Server
from service.schemas.requests import LESSON_REQUEST

RESULTS = ROOT / "bench" / "results"
Row = tuple[str, str, str, str]  # what, plain, service, ratio


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(fn: Callable[[], object], repetitions: int, warmup: int = 0) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repetitions):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms" if seconds < 1 else f"{seconds:.3f} s"


def megabytes(value: float) -> str:
    return f"{value:.0f} MB"


def row(what: str, plain_s: float, service_s: float, fmt: Callable[[float], str] = ms) -> Row:
    return (what, fmt(plain_s), fmt(service_s), f"{service_s / plain_s:.2f}x")


def lesson(rounds: int = 40, block: int = 25) -> list[Row]:
    """Blocks of notebook runs and of HTTP requests alternate, so that drifts in the speed
    of a shared machine hit both sides alike."""
    body = json.dumps(LESSON_REQUEST).encode()
    notebook, service = [], []
    with Server() as server:
        client = Client(server.port)
        post = lambda: client.post_raw("/v1/diagnostics", body)  # noqa: E731
        timed(plain.notebook_once, 0, warmup=200)
        timed(post, 0, warmup=200)
        for _ in range(rounds):
            notebook += timed(plain.notebook_once, block)
            service += timed(post, block)
        status, data = post()
        assert status == 200, data
    expected = dict(plain.notebook_once())
    got = {p["name"]: p["grad"]["mean_abs"] for p in json.loads(data)["parameters"]}
    assert all(abs(got[k] - v) <= 1e-5 * v for k, v in expected.items()), (got, expected)
    p50 = row(
        "lesson p50: notebook in-process vs HTTP", quantile(notebook, 0.5), quantile(service, 0.5)
    )
    p99 = row("lesson p99", quantile(notebook, 0.99), quantile(service, 0.99))
    return [p50, p99]


def _throughput(port: int, clients: int, per_client: int) -> float:
    body = json.dumps(LESSON_REQUEST).encode()

    def work() -> None:
        client = Client(port)
        for _ in range(per_client):
            status, _ = client.post_raw("/v1/diagnostics", body)
            assert status == 200

    threads = [threading.Thread(target=work) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return clients * per_client / (time.perf_counter() - started)


def throughput(clients: int = 8, per_client: int = 150) -> list[Row]:
    notebook = timed(plain.notebook_once, 1000, warmup=100)
    in_process = len(notebook) / sum(notebook)
    cores = os.cpu_count() or 1
    rows = []
    for label, settings in (
        ("make serve defaults", {}),
        (f"{cores} workers, 1 torch thread each", {"workers": cores, "torch_threads": 1}),
    ):
        with Server(**settings) as server:
            _throughput(server.port, clients, 20)  # warm every worker process
            rate = _throughput(server.port, clients, per_client)
        rows.append(
            (
                f"lesson throughput, {clients} clients, {label} (req/s; ratio = service/plain)",
                f"{in_process:.0f}/s",
                f"{rate:.0f}/s",
                f"{rate / in_process:.2f}x",
            )
        )
    return rows


def _mlp_request(depth: int, width: int, batch: int) -> dict:
    return {
        "model": {"kind": "mlp", "layer_sizes": [width] * (depth + 1), "activation": "relu",
                  "shortcut": True},
        "input": {"shape": [batch, width], "distribution": "normal", "seed": 1},
        "loss": "sum",
    }  # fmt: skip


def scaling(reps: int = 5) -> list[Row]:
    configs = [(d, 256, 64) for d in (8, 32, 128, 256)]
    configs += [(8, w, 64) for w in (64, 512, 2048)]
    configs += [(8, 256, b) for b in (1, 256)]
    rows = []
    with Server() as server:
        client = Client(server.port)
        for depth, width, batch in configs:
            request = _mlp_request(depth, width, batch)
            client.post("/v1/diagnostics", request)  # builds and caches the initial model
            reports = [client.post("/v1/diagnostics", request) for _ in range(reps)]
            compute = statistics.median(r["timing_ms"]["total"] for r in reports) / 1000
            stats = statistics.median(
                r["timing_ms"]["statistics"] / r["timing_ms"]["total"] for r in reports
            )
            torch.manual_seed(0)
            model = plain.mlp(depth, width)
            inputs = torch.randn(batch, width)
            plain.forward_backward(model, inputs)  # warm
            # forward_backward times the passes only, as timing_ms.total does; clearing the
            # previous gradients (freeing them) stays outside, as the service's reset does.
            plain_s = statistics.median(plain.forward_backward(model, inputs) for _ in range(reps))
            params = depth * (width * width + width)
            what = f"MLP depth {depth} width {width} batch {batch}"
            what += f" ({params / 1e6:.2f}M params; statistics {stats:.0%} of the run)"
            rows.append(row(what, plain_s, compute))
    return rows


def _gpt_request(seed: int) -> dict:
    return {
        "model": {"kind": "gpt", "preset": "gpt2-small"},
        "input": {"shape": [1, 128], "distribution": "randint", "high": 50257, "seed": 1},
        "target": {"shape": [1, 128], "distribution": "randint", "high": 50257, "seed": 2},
        "loss": "cross_entropy",
        "seed": seed,
    }


def _plain_gpt(seed: int, warms: int) -> dict[str, list[float]]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.plain", "gpt", str(seed), str(warms)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def gpt(reps: int = 4, warms: int = 3) -> list[Row]:
    """Rounds alternate a plain script (a fresh process: build + forward + backward, then
    forward + backward again, and its peak memory) with the server (a request with a new
    seed, then the same request again). Each side has run one model before it is measured
    (the plain script runs one first; the server gets one request first)."""
    plain_cold, plain_warm, plain_peak, cold, warm, shares = [], [], [], [], [], []
    with Server() as server:
        Client(server.port).post("/v1/diagnostics", _gpt_request(99))
        for rep in range(reps):
            result = _plain_gpt(100 + rep, warms)
            client = Client(server.port)  # a new connection: the old one idled past keep-alive
            plain_cold += result["cold"]
            plain_warm += result["warm"]
            plain_peak += result["peak_rss_mb"]
            started = time.perf_counter()
            client.post("/v1/diagnostics", _gpt_request(100 + rep))
            cold.append(time.perf_counter() - started)
            for _ in range(warms):
                started = time.perf_counter()
                report = client.post("/v1/diagnostics", _gpt_request(100 + rep))
                warm.append(time.perf_counter() - started)
                shares.append(report["timing_ms"]["statistics"] / report["timing_ms"]["total"])
        peak = server.peak_rss_mb()
    return [
        row("gpt2-small cold: build+fwd+bwd vs first request", median(plain_cold), median(cold)),
        row("gpt2-small warm: fwd+bwd vs repeated request", median(plain_warm), median(warm)),
        row("gpt2-small peak RSS: plain script vs server", median(plain_peak), peak, megabytes),
        ("gpt2-small: statistics share of a warm request", "", f"{median(shares):.1%}", ""),
    ]


def _lesson_p50s(ports: list[int], rounds: int, block: int) -> list[float]:
    """p50 of the lesson's synchronous route on each server, blocks interleaved."""
    body = json.dumps(LESSON_REQUEST).encode()
    clients = [Client(port) for port in ports]
    samples: list[list[float]] = [[] for _ in ports]
    for client in clients:
        timed(lambda c=client: c.post_raw("/v1/diagnostics", body), 0, warmup=100)
    for _ in range(rounds):
        for client, times in zip(clients, samples, strict=True):
            times += timed(lambda c=client: c.post_raw("/v1/diagnostics", body), block)
    return [quantile(times, 0.5) for times in samples]


def _sweep_seconds(port: int, reps: int = 2) -> float:
    sweep = {
        "base": {
            "model": {"kind": "mlp", "layer_sizes": [512] * 9, "activation": "relu"},
            "input": {"shape": [1024, 512], "distribution": "normal", "seed": 1},
            "loss": "sum",
        },
        "axes": [{"path": "seed", "values": list(range(1, 25))}],
    }
    client = Client(port)
    times = timed(lambda: client.post("/v1/sweeps", sweep), reps)
    return median(times)


def celery(rounds: int = 20, block: int = 25) -> list[Row]:
    from tests.processes import RedisServer, Worker

    redis_server = RedisServer().start()
    try:
        settings = {"backend": "celery", "broker_url": redis_server.url}
        one = Worker(redis_server.url, "cpu.small,cpu.large", concurrency=1).wait_ready()
        try:
            with Server() as local, Server(**settings) as remote:
                inprocess, through_celery = _lesson_p50s([local.port, remote.port], rounds, block)
                single = _sweep_seconds(remote.port)
        finally:
            one.stop()
        two = Worker(redis_server.url, "cpu.small,cpu.large", concurrency=2).wait_ready()
        try:
            with Server(**settings) as remote:
                double = _sweep_seconds(remote.port)
        finally:
            two.stop()
    finally:
        redis_server.stop()
    return [
        row("lesson p50: in-process backend vs celery backend", inprocess, through_celery),
        (
            "24-run sweep (MLP 8x512, batch 1024): one worker process vs two (speed-up)",
            ms(single),
            ms(double),
            f"{single / double:.2f}x faster",
        ),
    ]


PARTS = {
    "lesson": lesson,
    "throughput": throughput,
    "scaling": scaling,
    "gpt": gpt,
    "celery": celery,
    "curvature": curvature,
    "per_sample": per_sample,
}


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )


def main(argv: list[str]) -> None:
    chosen = argv or list(PARTS)
    rows: list[Row] = []
    for name in chosen:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows.extend(PARTS[name]())
        print("\n".join(" | ".join(r) for r in rows), file=sys.stderr, flush=True)
    lines = [
        f"Machine: {machine()}",
        "",
        "| measurement | plain PyTorch | gradiag | ratio |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
