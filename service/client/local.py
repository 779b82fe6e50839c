"""The client's calls run in this process, with no server: for notebooks and CI. The
service's own app answers them (the same validation, runs and reports as over HTTP), its
lifespan started once and stopped by `close()` or at the end of a `with` block. Settings
are the environment's (`GRADIAG_DEVICE`, ...) or those given; API keys do not apply."""

import os
from dataclasses import dataclass

import torch

from service.client.aio import AsyncClient
from service.client.hosting import HostedApp, LoopThread, LoopTransport
from service.client.retry import DEFAULT_RETRY, Retry
from service.client.sync import Client
from service.config import Settings
from service.main import create_app

LOCAL_URL = "http://gradiag.local"


def _hosted(settings: Settings | None) -> HostedApp:
    # A notebook's process is not the service's: no frozen garbage collector, no one-arena
    # malloc (neither can be undone), and torch's global settings restored at `close()`.
    local = {"api_keys": [], "gc_freeze": False, "malloc_arenas": 0}
    return HostedApp(create_app((settings or Settings()).model_copy(update=local)))


@dataclass(frozen=True)
class TorchState:
    """What the service's runtime sets process-wide in torch, to be put back."""

    deterministic: bool
    threads: int
    cublas_workspace: str | None

    @classmethod
    def now(cls) -> "TorchState":
        workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        return cls(torch.are_deterministic_algorithms_enabled(), torch.get_num_threads(), workspace)

    def restore(self) -> None:
        torch.use_deterministic_algorithms(self.deterministic)
        torch.set_num_threads(self.threads)
        if self.cublas_workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = self.cublas_workspace


class LocalClient(Client):
    """`Client`'s calls answered by the app in this process, on an event loop of its own;
    the app starts here (its errors raise here)."""

    def __init__(self, settings: Settings | None = None, *, retry: Retry = DEFAULT_RETRY) -> None:
        self._torch = TorchState.now()
        self._app = _hosted(settings)
        self._loop = LoopThread()
        try:
            self._loop.run(self._app.start())
        except BaseException:
            self._loop.close()
            self._torch.restore()
            raise
        transport = LoopTransport(self._loop, self._app.transport())
        super().__init__(LOCAL_URL, api_key="", timeout_s=None, retry=retry, transport=transport)

    def close(self) -> None:
        """Stop the app (runs in flight are cancelled) and its loop; once is enough."""
        super().close()
        if not self._loop.loop.is_closed():
            try:
                self._loop.run(self._app.stop())
            finally:
                self._loop.close()
                self._torch.restore()


class AsyncLocalClient(AsyncClient):
    """`AsyncClient`'s calls answered by the app in this process, on the caller's event
    loop; the app starts at the first call (or `await start()`)."""

    def __init__(self, settings: Settings | None = None, *, retry: Retry = DEFAULT_RETRY) -> None:
        self._torch = TorchState.now()
        self._app = _hosted(settings)
        transport = self._app.transport()
        super().__init__(LOCAL_URL, api_key="", timeout_s=None, retry=retry, transport=transport)

    async def start(self) -> None:
        await self._app.start()

    async def aclose(self) -> None:
        await super().aclose()
        try:
            await self._app.stop()
        finally:
            self._torch.restore()
