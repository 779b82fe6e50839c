"""A Python client of the gradiag API: `Client` (synchronous) and `AsyncClient` (asyncio)
call a server; `service.client.local.LocalClient` makes the same calls in this process,
with no server; `spec_from_module` turns the user's own PyTorch module into a spec.

    from service.client import Client

    with Client("http://127.0.0.1:8000") as client:
        report = client.diagnose(request)
        print(report["diagnosis"]["verdict"])
"""

from service.client.aio import AsyncClient
from service.client.problem import GradiagProblem
from service.client.retry import Retry
from service.client.spec import UnsupportedModule, spec_from_module
from service.client.sync import Client

__all__ = [
    "AsyncClient",
    "Client",
    "GradiagProblem",
    "Retry",
    "UnsupportedModule",
    "spec_from_module",
]
