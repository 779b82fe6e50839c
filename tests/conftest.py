import math
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import Limits, Settings
from service.main import create_app


def make_settings(**overrides: Any) -> Settings:
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
