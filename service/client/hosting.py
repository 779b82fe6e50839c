"""The app hosted in this process as a server hosts it: its lifespan started once (lazily,
at the first request, if not before), the lifespan's state handed to every request, and
stopped at the end. Requests reach it through httpx's ASGI transport; a synchronous client
reaches it through an event loop of its own, on a thread."""

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any, TypeVar

import httpx

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Coroutine[Any, Any, None]]
T = TypeVar("T")


class HostedApp:
    """An ASGI app and its lifespan, on the event loop that first calls it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._state: dict[str, Any] = {}
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        """Run the lifespan's start-up; its failure raises here."""
        async with self._starting:
            if self._task is not None:
                return
            scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self._state}
            self._task = asyncio.create_task(self.app(scope, self._to_app.get, self._from_app.put))
            await self._to_app.put({"type": "lifespan.startup"})
            await self._expect("lifespan.startup.complete")

    async def stop(self) -> None:
        """Run the lifespan's shutdown (the app's backend stops)."""
        if self._task is None or self._task.done():
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        await self._expect("lifespan.shutdown.complete")
        await self._task

    async def _expect(self, expected: str) -> None:
        assert self._task is not None
        answer = asyncio.ensure_future(self._from_app.get())
        await asyncio.wait({answer, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            answer.cancel()
            self._task.result()  # the app's exception, if it raised one
            raise RuntimeError(f"the app's lifespan ended without {expected}")
        message = answer.result()
        if message["type"] != expected:
            # Starlette's failure message is the whole traceback: its last line says why.
            lines = str(message.get("message") or message["type"]).strip().splitlines()
            with contextlib.suppress(BaseException):  # retrieved: the last line says it
                await self._task
            raise RuntimeError(lines[-1])

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.start()
            # As uvicorn does: each request gets a shallow copy of the lifespan's state.
            scope = {**scope, "state": dict(self._state)}
        await self.app(scope, receive, send)

    def transport(self) -> httpx.ASGITransport:
        return httpx.ASGITransport(self, raise_app_exceptions=False)


class LoopThread:
    """An event loop running on a thread of its own, for synchronous callers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="gradiag-local", daemon=True
        )
        self._thread.start()

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` on the loop; wait for its result here."""
        return asyncio.run_coroutine_threadsafe(work, self.loop).result()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.run(_cancel_others())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


async def _cancel_others() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class LoopTransport(httpx.BaseTransport):
    """A synchronous httpx transport that sends each request to an async one on a loop."""

    def __init__(self, loop: LoopThread, transport: httpx.AsyncBaseTransport) -> None:
        self.loop = loop
        self.transport = transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def send() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            response = await self.transport.handle_async_request(request)
            body = b"".join([chunk async for chunk in response.aiter_raw()])
            return response.status_code, response.headers.raw, body

        status, headers, body = self.loop.run(send())
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))
