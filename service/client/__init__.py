"""A Python client of the gradiag API: `Client` (synchronous) and `AsyncClient` (asyncio)
call a server; `service.client.local.LocalClient` makes the same calls in this process,
with no server.

    from service.client import Client

    with Client("http://127.0.0.1:8000") as client:
        report = client.diagnose(request)
        print(report["diagnosis"]["verdict"])
"""

from service.client.aio import AsyncClient
from service.client.problem import GradiagProblem
from service.client.retry import Retry
from service.client.sync import Client

__all__ = ["AsyncClient", "Client", "GradiagProblem", "Retry"]
