"""A `gradiag serve` subprocess on 127.0.0.1, and a lean keep-alive HTTP client for it."""

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`gradiag serve` with the given GRADIAG_* settings, stopped on exit."""

    def __init__(self, **settings: Any) -> None:
        self.port = free_port()
        env = {**os.environ, "GRADIAG_DEVICE": "cpu"}
        env.update({f"GRADIAG_{k.upper()}": str(v) for k, v in settings.items()})
        command = [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)]
        self.process = subprocess.Popen([*command, "--log-level", "warning"], cwd=ROOT, env=env)
        # Ready: the runtime is bootstrapped (the kernel checked) before the app serves.
        deadline = time.monotonic() + 120
        while True:
            try:
                if Client(self.port).get("/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)

    def peak_rss_mb(self) -> float:
        """Peak resident memory of the server process(es), from /proc (VmHWM)."""
        pids = [self.process.pid, *_children(self.process.pid)]
        return max(_status_kb(pid, "VmHWM") for pid in pids) / 1024

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Client:
    """One keep-alive connection; bodies are serialised once, outside the timed loop."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def get(self, path: str) -> tuple[int, Any]:
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        return response.status, json.loads(response.read())

    def post_raw(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.connection.request("POST", path, body, {"content-type": "application/json"})
        response = self.connection.getresponse()
        return response.status, response.read()

    def post(self, path: str, body: Any) -> Any:
        status, data = self.post_raw(path, json.dumps(body).encode())
        if status != 200:
            raise RuntimeError(f"{status}: {data[:300]!r}")
        return json.loads(data)
