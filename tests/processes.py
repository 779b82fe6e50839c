"""Real processes for tests: a `redis-server` of their own on a free port (never the
machine's), `gradiag worker` and `gradiag serve` subprocesses. No mocks."""

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """`redis-server` on 127.0.0.1 and a free port, in memory only; it can be stopped and
    started again on the same port."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (.ci/run installs it)")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.folder = tempfile.mkdtemp(prefix="gradiag-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "RedisServer":
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", self.folder]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)


class Worker:
    """`gradiag worker` in a subprocess, started with the given GRADIAG_* settings."""

    def __init__(self, broker_url: str, queues: str, concurrency: int = 1, **settings: object):
        env = {**os.environ, "GRADIAG_BROKER_URL": broker_url, "GRADIAG_DEVICE": "cpu",
               "GRADIAG_TORCH_THREADS": "1", "GRADIAG_GC_FREEZE": "false"}  # fmt: skip
        env.update({f"GRADIAG_{k.upper()}": str(v) for k, v in settings.items()})
        command = [sys.executable, "-m", "service.cli", "worker", f"--queues={queues}",
                   f"--concurrency={concurrency}", "--log-level=warning"]  # fmt: skip
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
        self.broker_url = broker_url
        self.concurrency = concurrency

    def wait_ready(self, limit_s: float = 90) -> "Worker":
        """Until its children exist and its heartbeat is in Redis."""
        client = redis.Redis.from_url(self.broker_url, decode_responses=True)
        deadline = time.monotonic() + limit_s
        while not (client.hlen("gradiag:workers") and len(self.children()) >= self.concurrency):
            assert self.process.poll() is None, "the worker exited"
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.1)
        return self

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


class Serve:
    """`gradiag serve` in a subprocess on 127.0.0.1 and a free port, started with the given
    GRADIAG_* settings, on the CPU; a context manager too (ready on entry, killed on exit)."""

    def __init__(self, *args: str, stderr: Any = None, **settings: object):
        env = {**os.environ, "GRADIAG_DEVICE": "cpu", "GRADIAG_TORCH_THREADS": "1",
               "GRADIAG_GC_FREEZE": "false"}  # fmt: skip
        env.update({f"GRADIAG_{k.upper()}": str(v) for k, v in settings.items()})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port), "--log-level", "warning", *args]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, start_new_session=True, stderr=stderr
        )

    def wait_ready(self, limit_s: float = 90) -> "Serve":
        """Until /readyz answers 200."""
        deadline = time.monotonic() + limit_s
        while True:
            assert self.process.poll() is None, "gradiag serve exited"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "gradiag serve did not become ready"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> "Serve":
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def rss_bytes(self) -> int:
        pages = int(Path(f"/proc/{self.process.pid}/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a new connection: (status, headers, body)."""
        headers = dict(headers or {})
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if body is not None:
                headers.setdefault("content-type", "application/json")
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()
