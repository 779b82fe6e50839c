import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import Limits, Settings
from service.main import create_app
from tests.browser import LAUNCH_ARGS


def make_settings(**overrides: Any) -> Settings:
    """Test settings: the CPU; otherwise the defaults (the native statistics kernel where
    gcc is; tests/test_statistics.py checks the eager path)."""
    limits = overrides.pop("limits", {})
    return Settings(device="cpu", limits=Limits(**limits), **overrides)


@pytest.fixture
def make_client() -> Iterator[Any]:
    """A factory of TestClients (lifespan running) for apps with custom settings."""
    clients: list[TestClient] = []

    def factory(**overrides: Any) -> TestClient:
        client = TestClient(create_app(make_settings(**overrides)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture(scope="session")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(make_settings()), raise_server_exceptions=False) as c:
        yield c


def close(a: float | None, b: float, rel: float = 1e-5, abs_: float = 1e-12) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


class LiveServer:
    """The real app under uvicorn in a thread, on 127.0.0.1 and a free port: `app`, or one
    built with the settings `overrides`."""

    def __init__(self, app: Any = None, **overrides: Any) -> None:
        import socket
        import threading

        import uvicorn

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app or create_app(make_settings(**overrides)),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            timeout_graceful_shutdown=30,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


@pytest.fixture
def live_server() -> Iterator[Any]:
    servers: list[LiveServer] = []

    def start(app: Any = None, **overrides: Any) -> LiveServer:
        server = LiveServer(app, **overrides).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium (apt's `chromium`) under Playwright. Per module: Playwright's
    sync API keeps an event loop running in this thread, where later tests call asyncio.run."""
    sync_api = pytest.importorskip("playwright.sync_api")
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium not installed (CI installs it via apt)")
        pytest.skip("chromium not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where tests keep what a person may want to look at (screenshots): GRADIAG_TEST_ARTEFACTS,
    else `artefacts` in pytest's base temporary directory (pytest keeps the last three)."""
    chosen = os.environ.get("GRADIAG_TEST_ARTEFACTS")
    folder = Path(chosen) if chosen else tmp_path_factory.getbasetemp() / "artefacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
