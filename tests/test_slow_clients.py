"""Slow clients cannot hold `gradiag serve`: raw sockets against a real process with short
read deadlines and a small connection cap."""

import json
import selectors
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from service.schemas.requests import LESSON_REQUEST
from tests.processes import Serve

pytestmark = pytest.mark.slow

HEADER_S = 2.0
BODY_S = 2.0
CAP = 250
SLACK_S = 2.0  # a loaded 2-core machine: the deadline fires on the next turn of the loop


@pytest.fixture(scope="module")
def server() -> Iterator[Serve]:
    serve = Serve(header_timeout_s=HEADER_S, body_timeout_s=BODY_S, max_connections=CAP)
    try:
        yield serve.wait_ready()
    finally:
        serve.stop()


def connect(server: Serve) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length, the connection left open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def problem_of(response: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(server):
    with connect(server) as sock:
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        elapsed = time.monotonic() - started
    assert HEADER_S - 0.1 <= elapsed <= HEADER_S + SLACK_S, elapsed


def test_half_sent_headers_get_a_408_and_the_connection_closes(server):
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gradiag\r\n")  # no blank line: stalls
        started = time.monotonic()
        response = read_until_closed(sock)
        elapsed = time.monotonic() - started
    status, headers, problem = problem_of(response)
    assert status == 408
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    assert problem["code"] == "request_timeout" and "headers" in str(problem["detail"])
    assert HEADER_S - 0.1 <= elapsed <= HEADER_S + SLACK_S, elapsed


def test_half_sent_body_gets_a_408_and_the_connection_closes(server):
    body = json.dumps(LESSON_REQUEST).encode()
    with connect(server) as sock:
        sock.sendall(
            b"POST /v1/diagnostics HTTP/1.1\r\nHost: gradiag\r\nContent-Type: application/json\r\n"
            b"X-Request-ID: slow-1\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body[: len(body) // 2])
        )
        started = time.monotonic()
        response = read_until_closed(sock)
        elapsed = time.monotonic() - started
    status, headers, problem = problem_of(response)
    assert status == 408 and headers["connection"] == "close"
    assert problem["code"] == "request_timeout" and "body" in str(problem["detail"])
    assert headers["x-request-id"] == problem["request_id"] == "slow-1"
    assert BODY_S - 0.1 <= elapsed <= BODY_S + SLACK_S, elapsed


def test_a_slow_but_steady_client_is_answered_and_kept_alive(server):
    body = json.dumps(LESSON_REQUEST).encode()
    head = (
        b"POST /v1/diagnostics HTTP/1.1\r\nHost: gradiag\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with connect(server) as sock:
        for part in (head[:20], head[20:]):  # headers in two parts, within their deadline
            sock.sendall(part)
            time.sleep(HEADER_S / 4)
        for part in (body[:100], body[100:]):  # and the body too
            sock.sendall(part)
            time.sleep(BODY_S / 4)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(HEADER_S * 0.75)  # idle, within keep-alive: the next request is served
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gradiag\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")


def test_a_kept_alive_connection_that_sends_blank_lines_is_closed(server):
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gradiag\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"\r\n")  # stops uvicorn's keep-alive timer, and begins no request
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        elapsed = time.monotonic() - started
    assert HEADER_S - 0.1 <= elapsed <= HEADER_S + SLACK_S, elapsed


def test_two_hundred_stalled_clients_do_not_hold_the_server(server):
    stalled = []
    try:
        for i in range(200):
            sock = connect(server)
            if i % 2:  # half send part of a request, half nothing
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost:")
            stalled.append(sock)
        opened = started = time.monotonic()
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        assert time.monotonic() - started < 1.0
        # Every one of them is closed by the header deadline.
        selector = selectors.DefaultSelector()
        for sock in stalled:
            selector.register(sock, selectors.EVENT_READ)
        open_ = len(stalled)
        deadline = opened + HEADER_S + SLACK_S
        while open_ and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                read_until_closed(sock)
                selector.unregister(sock)
                open_ -= 1
        selector.close()
        assert open_ == 0, f"{open_} of 200 stalled connections still open"
    finally:
        for sock in stalled:
            sock.close()


def test_beyond_the_connection_cap_requests_get_503_until_the_idle_ones_are_closed(server):
    idle = [connect(server) for _ in range(CAP)]
    try:
        with connect(server) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gradiag\r\n\r\n")
            status, headers, problem = problem_of(read_until_closed(sock))
        assert status == 503 and problem["code"] == "overloaded"
        assert headers["retry-after"] == "1" and headers["connection"] == "close"
        assert headers["x-request-id"] == problem["request_id"]
        # The header deadline closes the idle ones, and the cap has room again.
        started = time.monotonic()
        while httpx.get(f"{server.url}/healthz", timeout=5).status_code != 200:
            assert time.monotonic() - started < HEADER_S + SLACK_S, "the cap stayed full"
            time.sleep(0.1)
    finally:
        for sock in idle:
            sock.close()
