"""Hostile and careless input: each case once reproduced a 500, a stall or unbounded memory.
Every case asserts the status and the problem's code; the live-server cases also assert
that `/healthz` answers meanwhile and that the process's memory returns within a bound."""

import asyncio
import contextlib
import gzip
import json
import random
import select
import socket
import threading
import time

import httpx
import pytest

from service.schemas.requests import LESSON_REQUEST
from tests.processes import Serve
from tests.test_errors import assert_problem

URL = "/v1/diagnostics"
COMPARE = "/v1/diagnostics/compare"


def _nested_object(depth: int, leaf: str) -> str:
    """`{"x": {"x": ... leaf}}` as text: deeper than json.dumps can write."""
    return '{"x":' * depth + leaf + "}" * depth


def test_merge_patch_nested_past_the_recursion_limit_is_422(client):
    # A recursive merge hit Python's recursion limit: a 500.
    for where in ("model", "seed", "unknown"):
        variants = f'{{"a": {{"{where}": {_nested_object(1000, "1")}}}}}'
        body = f'{{"base": {json.dumps(LESSON_REQUEST)}, "variants": {variants}}}'
        response = client.post(COMPARE, content=body, headers={"content-type": "application/json"})
        assert_problem(response, 422, "invalid_request")
    assert client.get("/healthz").status_code == 200


class HealthWatch:
    """Polls `/healthz` on a thread while something else runs; the slowest answer it saw."""

    def __init__(self, server: Serve) -> None:
        self.server, self.worst, self.count = server, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set() and self.count < 10_000:
            started = time.monotonic()
            status, _, _ = self.server.request("GET", "/healthz", timeout=30)
            assert status == 200
            self.worst = max(self.worst, time.monotonic() - started)
            self.count += 1
            self._stop.wait(0.02)

    def __enter__(self) -> "HealthWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def _big_base(rows: int = 1000, cols: int = 1000) -> dict:
    """A request whose literal input holds rows x cols numbers (about 6.7 MiB at 1000 x 1000)."""
    rng = random.Random(0)
    return {
        "model": {"kind": "mlp", "layer_sizes": [cols, 4, 1]},
        "input": [[round(rng.random(), 4) for _ in range(cols)] for _ in range(rows)],
        "target": [[0.0]] * rows,
        "loss": "mse",
        "seed": 1,
    }


@pytest.fixture(scope="module")
def server():
    with Serve(request_timeout_s=60) as live:
        yield live


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sweep", "compare"])
def test_a_big_shared_base_is_checked_once_and_never_stalls_the_loop(server, kind):
    # The base was checked on the event loop once per point (docs/performance.md).
    base = _big_base()
    if kind == "sweep":
        seeds = {"path": "seed", "values": list(range(256))}
        path, body = "/v1/sweeps", {"base": base, "axes": [seeds]}
    else:
        path, body = COMPARE, {"base": base, "variants": {f"v{i}": {"seed": i} for i in range(16)}}
    with HealthWatch(server) as health:
        status, _, answer = server.request("POST", path, json.dumps(body).encode())
    assert status == 200, answer[:300]
    runs = json.loads(answer)["runs"]
    assert len(runs) == (256 if kind == "sweep" else 16)
    assert health.count > 0
    assert health.worst < 2.0, f"/healthz took {health.worst:.2f} s while the request ran"


def test_the_deadline_counts_from_arrival_not_from_the_end_of_the_body():
    # A body sent (or checked) slowly used to get its full deadline on top.
    with Serve(request_timeout_s=1) as live:
        body = json.dumps(LESSON_REQUEST).encode()
        head = (
            f"POST /v1/diagnostics HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
            sock.sendall(head + body[:10])
            time.sleep(1.5)
            sock.sendall(body[10:])
            answer = _read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 504"), answer[:200]
        problem = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert problem["code"] == "timeout" and "nothing was started" in problem["detail"]


def test_errors_echo_only_a_short_prefix_of_what_was_sent(client):
    # An unknown key came back whole, twice.
    key = "k" * 5_000_000
    body = json.dumps({**LESSON_REQUEST, key: 1})
    response = client.post(URL, content=body, headers={"content-type": "application/json"})
    problem = assert_problem(response, 422, "invalid_request")
    assert len(response.content) < 4096
    assert problem["errors"][0]["loc"][-1].startswith("kkk")
    # Thousands of bad fields: the first 50 are listed, the rest counted.
    layers = [{"type": "nope"}] * 4000
    body = json.dumps({**LESSON_REQUEST, "model": {"kind": "sequential", "layers": layers}})
    response = client.post(URL, content=body, headers={"content-type": "application/json"})
    problem = assert_problem(response, 422, "invalid_request")
    assert len(problem["errors"]) == 50 and problem["errors_omitted"] > 0
    assert len(response.content) < 64 * 1024


def _gzip_post(client, body: bytes, encoding: str = "gzip"):
    headers = {"content-type": "application/json", "content-encoding": encoding}
    return client.post(URL, content=body, headers=headers)


def test_gzip_bodies_are_decompressed_within_the_limit(make_client):
    # gzip was parsed as JSON: a 400 for gzip, and plain bodies labelled gzip accepted.
    api = make_client(max_body_bytes=1 << 20)
    plain = json.dumps(LESSON_REQUEST).encode()
    answered = _gzip_post(api, gzip.compress(plain))
    assert answered.status_code == 200, answered.text
    assert answered.json()["loss"] == api.post(URL, json=LESSON_REQUEST).json()["loss"]
    assert_problem(_gzip_post(api, plain), 400, "invalid_request")  # labelled, not gzip
    assert_problem(_gzip_post(api, gzip.compress(plain)[:-12]), 400, "invalid_request")
    bomb = gzip.compress(b" " * (64 << 20))  # 64 MiB of spaces in about 64 KiB
    assert len(bomb) < 1 << 20
    assert_problem(_gzip_post(api, bomb), 413, "body_too_large")
    assert_problem(_gzip_post(api, plain, "br"), 415, "unsupported_media_type")
    assert api.get("/healthz").status_code == 200


def test_sweep_reports_name_big_axis_values_by_index(client):
    # Each run repeated its axis values: the answer grew with their size times the runs.
    inputs = [[[float((i + j + k) % 7) for k in range(64)] for j in range(64)] for i in range(4)]
    base = {**LESSON_REQUEST, "model": {"kind": "mlp", "layer_sizes": [64, 8, 1]}}
    base["target"] = [[0.0]] * 64
    axes = [{"path": "input", "values": inputs}, {"path": "seed", "values": list(range(8))}]
    body = json.dumps({"base": base, "axes": axes})
    response = client.post("/v1/sweeps", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text[:300]
    assert len(response.content) < len(body)
    report = response.json()
    assert [run["point"] for run in report["runs"]][:3] == [
        {"input": 0, "seed": 0},
        {"input": 0, "seed": 1},
        {"input": 0, "seed": 2},
    ]
    assert report["runs"][9]["axes"] == {"seed": 1}  # the big value only by its index
    group = report["across_seeds"][2]
    assert (
        group["point"] == {"input": 2} and group["axes"] == {} and group["seeds"] == list(range(8))
    )


@pytest.mark.slow
def test_retry_after_is_the_expected_wait_for_room(live_server):
    # The median job time of a few lessons said 1 s while the heavy job ahead took seconds.
    server = live_server(concurrency=1, queue_capacity=1, limits={"max_flops": 10**15})
    heavy = {
        "model": {"kind": "mlp", "layer_sizes": [1024] * 33, "activation": "relu"},
        "input": {"shape": [2000, 1024], "distribution": "normal"},
        "loss": "sum",
    }
    later = {"prefer": "respond-async"}

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            for seed in range(3):
                lesson = await client.post(URL, json={**LESSON_REQUEST, "seed": seed})
                assert lesson.status_code == 200
            assert (await client.post(URL, json=heavy)).status_code == 200  # a rate to go by
            for seed in (1, 2):
                queued = await client.post(URL, json={**heavy, "seed": seed}, headers=later)
                assert queued.status_code == 202
            refused = await client.post(URL, json=LESSON_REQUEST)
            started = time.monotonic()
            while (await client.get("/readyz")).json()["backend"]["in_flight"] >= 2:
                assert time.monotonic() - started < 120
                await asyncio.sleep(0.02)
            return refused, time.monotonic() - started

    refused, room_after_s = asyncio.run(scenario())
    assert_problem(refused, 429, "overloaded")
    retry_after = int(refused.headers["retry-after"])
    assert room_after_s / 3 <= retry_after <= 3 * room_after_s + 2, (retry_after, room_after_s)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_a_generator_that_overflows_names_the_dtype_that_did(client, dtype):
    # The float32 draw overflowed, and the error named the request's dtype.
    body = {
        **LESSON_REQUEST,
        "dtype": dtype,
        "input": {"shape": [64, 3], "distribution": "normal", "std": 1e38},
        "target": {"shape": [64, 1], "distribution": "zeros"},
    }
    problem = assert_problem(client.post(URL, json=body), 422, "invalid_tensor", ["body", "input"])
    assert "overflow float32" in problem["detail"]


def test_literal_values_past_the_dtype_are_refused_with_its_name(client):
    # 1e20 fits float32; 1e39 does not, nor bfloat16, whose range is float32's.
    for dtype, value, fits in [("float32", 1e20, True), ("float32", 1e39, False),
                               ("bfloat16", 1e39, False), ("float64", 1e39, True)]:  # fmt: skip
        body = {**LESSON_REQUEST, "dtype": dtype, "input": [[value, 0.0, -1.0]]}
        response = client.post(URL, json=body)
        if fits:
            assert response.status_code == 200, response.text
        else:
            problem = assert_problem(response, 422, "invalid_tensor", ["body", "input"])
            assert dtype in problem["detail"]


def test_memory_is_budgeted_before_anything_is_allocated(make_client):
    # Only parameters and FLOPs were budgeted: such a compare was admitted.
    api = make_client(limits={"max_memory_bytes": 2 << 30, "max_flops": 10**15})
    base = {**LESSON_REQUEST, "model": {"kind": "mlp", "layer_sizes": [3] + [8192] * 6}}
    base["model"]["layer_sizes"][-1] = 1
    body = {"base": base, "variants": {f"v{i}": {"seed": i} for i in range(16)}}
    problem = assert_problem(api.post(COMPARE, json=body), 422, "budget_exceeded")
    assert "memory_bytes" in problem["exceeded"]
    parameters = problem["estimate"]["parameters"]
    assert problem["estimate"]["memory_bytes"] >= 2 * 4 * parameters > 2 << 30
    small = {"base": LESSON_REQUEST, "variants": {f"v{i}": {"seed": i} for i in range(16)}}
    assert api.post(COMPARE, json=small).status_code == 200


def test_a_long_sequence_is_budgeted_by_its_steps(make_client):
    # Each step of a recurrent layer costs autograd nodes (~17 KB for a GRU, in the pass and
    # in the through-time replay) whatever its width: a 1-unit GRU over 20,000 steps grew the
    # process by ~500 MB on an estimate of 35 MB, and 4,000,000 steps by 17 GB.
    api = make_client(limits={"max_memory_bytes": 512 << 20})
    body = {
        "model": {"kind": "sequential", "layers": [{"type": "gru", "hidden_size": 1}]},
        "input": {"shape": [1, 20_000, 1], "distribution": "normal"},
        "loss": "sum",
    }
    problem = assert_problem(api.post(URL, json=body), 422, "budget_exceeded")
    assert problem["exceeded"] == ["memory_bytes"]
    body["input"]["shape"] = [1, 2_000, 1]
    assert api.post(URL, json=body).status_code == 200


def _chunked(path: str, body: bytes, chunk: int = 1 << 16) -> bytes:
    """A raw HTTP/1.1 request whose body is sent chunked, with no Content-Length."""
    parts = [
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
    ]
    for start in range(0, len(body), chunk):
        piece = body[start : start + chunk]
        parts.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    parts.append(b"0\r\n\r\n")
    return b"".join(parts)


def _read_until_closed(sock: socket.socket) -> bytes:
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(1 << 16):
            answer += chunk
    return answer


def _raw(port: int, request: bytes) -> tuple[int, bytes]:
    """Send a raw request piece by piece, stopping early if the server answers first (as
    it does a body over the limit); then its status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        for start in range(0, len(request), 1 << 16):
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(request[start : start + (1 << 16)])
            except (BrokenPipeError, ConnectionResetError):
                break
        answer = _read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


LESSON = json.dumps(LESSON_REQUEST)
# (name, body, content type, expected status, expected code): each answered while /healthz
# keeps answering, and none leaves the process bigger than it found it.
HOSTILE = [
    ("nesting_100000_deep", b"[" * 100_000 + b"]" * 100_000, None, 400, "invalid_request"),
    ("body_9_mib", b" " * (9 << 20), None, 413, "body_too_large"),
    ("nan", LESSON.replace("1.0", "NaN", 1).encode(), None, 400, "invalid_request"),
    ("infinity", LESSON.replace("1.0", "Infinity", 1).encode(), None, 400, "invalid_request"),
    ("1e999", LESSON.replace("1.0", "1e999", 1).encode(), None, 400, "invalid_request"),
    ("unknown_field", LESSON[:-1].encode() + b', "surprise": 1}', None, 422, "invalid_request"),
    ("form_media_type", b"model=mlp", "application/x-www-form-urlencoded", 415,
     "unsupported_media_type"),
    ("no_media_type", LESSON.encode(), "", 415, "unsupported_media_type"),
    ("huge_string", LESSON[:-1].encode() + b', "loss": "' + b"x" * (7 << 20) + b'"}', None, 422,
     "invalid_request"),
    ("huge_int", LESSON[:-1].encode() + b', "seed": 1' + b"0" * 5000 + b"}", None, 400,
     "invalid_request"),
    ("empty", b"", None, 400, "invalid_request"),
]  # fmt: skip


@pytest.mark.slow
def test_hostile_bodies_on_a_live_server_keep_it_answering_and_its_memory_flat():
    with Serve() as live:
        live.request("POST", URL, LESSON.encode())  # start-up allocations first
        rss_before = live.rss_bytes()
        with HealthWatch(live) as health:
            for name, body, media, status, code in HOSTILE:
                headers = {"content-type": "application/json" if media is None else media}
                got, _, answer = live.request("POST", URL, body, headers)
                assert got == status, (name, answer[:300])
                assert json.loads(answer)["code"] == code, name
                assert len(answer) < 64 * 1024, name
            # Chunked, no length: refused once past the limit, answered when within it.
            got, answer = _raw(live.port, _chunked(URL, b" " * (9 << 20)))
            assert got == 413 and b'"code":"body_too_large"' in answer
            got, answer = _raw(live.port, _chunked(URL, LESSON.encode(), chunk=16))
            assert got == 200, answer[:300]
            # Duplicate keys: the last one wins, as in JSON.parse.
            got, _, answer = live.request("POST", URL, LESSON[:-1].encode() + b', "seed": 7}')
            assert got == 200 and json.loads(answer)["provenance"]["seed"] == 7
            # 1e20 fits float32 and bfloat16, its square does not: an answer, with findings.
            for dtype in ("float32", "bfloat16"):
                overflowing = {**LESSON_REQUEST, "dtype": dtype, "input": [[1e20, 0.0, -1e20]]}
                got, _, answer = live.request("POST", URL, json.dumps(overflowing).encode())
                assert got == 200 and json.loads(answer)["diagnosis"]["verdict"] == "non_finite"
        assert health.count > 0 and health.worst < 2.0, health.worst
        grown = live.rss_bytes() - rss_before
        assert grown < 64 << 20, f"RSS grew {grown >> 20} MiB"


def test_a_deep_location_is_cut_to_its_ends(client):
    layer: dict = {"type": "nope"}
    for _ in range(300):
        layer = {"type": "residual", "body": [layer]}
    body = {**LESSON_REQUEST, "model": {"kind": "sequential", "layers": [layer]}}
    response = client.post(
        URL, content=json.dumps(body), headers={"content-type": "application/json"}
    )
    problem = assert_problem(response, 422, "invalid_request")
    loc = problem["errors"][0]["loc"]
    assert len(loc) <= 32 and loc[:3] == ["body", "model", "layers"] and "…" in loc
