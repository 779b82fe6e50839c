"""The HTTP server `gradiag serve` runs: uvicorn with deadlines on reading a request, a
connection cap, and a shutdown that load balancers can see (a drain before the listener
closes)."""

import asyncio
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, cast

import uvicorn
from starlette.types import Receive as StarletteReceive
from starlette.types import Send as StarletteSend
from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from service import logs
from service.api.problems import render
from service.api.request_context import HEADER, accepted_id
from service.config import Settings
from service.errors import GradiagError, RequestTimeout, TooManyConnections
from service.lifecycle import Lifecycle

logger = logging.getLogger("uvicorn.error")


class ServeConfig(uvicorn.Config):
    """uvicorn's configuration with the settings its protocol and server read; it travels
    to worker processes whole (pickled), settings included."""

    def __init__(self, app: Any, settings: Settings, **kwargs: Any) -> None:
        # No websockets: the app has no such route, and the protocol's deadlines assume HTTP.
        super().__init__(
            app, http=GuardedProtocol, ws="none", timeout_keep_alive=settings.keep_alive_s, **kwargs
        )
        self.settings = settings


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (what it picks by default) with read deadlines: a
    request's headers within GRADIAG_HEADER_TIMEOUT_S of connecting, or of their first byte
    on a kept-alive connection; its body within GRADIAG_BODY_TIMEOUT_S of the headers. Past
    one, 408 and the connection closes; a connection that sent nothing is just closed.
    Beyond GRADIAG_MAX_CONNECTIONS open connections, requests get a 503 and are closed."""

    def __init__(
        self,
        config: ServeConfig,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.settings = config.settings
        self.deadline: asyncio.TimerHandle | None = None
        self.reading = False  # a request has begun and is not yet read whole

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.settings.header_timeout_s, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn stops the keep-alive timer on any byte, even a blank line: start the clock.
        if self.deadline is None and not self.reading:
            self._arm(self.settings.header_timeout_s, self._headers_late)
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading = True
        if self.deadline is None:  # the next of requests sent together (pipelining)
            self._arm(self.settings.header_timeout_s, self._headers_late)

    def on_headers_complete(self) -> None:
        self._disarm()
        cap = self.settings.max_connections
        over = len(self.connections) > cap or len(self.tasks) >= cap
        # uvicorn runs `self.app` for this request: the app, or a 503 where over the cap.
        self.app = self._refuse if over else self.config.loaded_app
        super().on_headers_complete()
        self._arm(self.settings.body_timeout_s, self._body_late)

    def on_message_complete(self) -> None:
        self._disarm()
        self.reading = False
        super().on_message_complete()

    def _arm(self, seconds: float, expired: Callable[[], None]) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(seconds, expired)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _headers_late(self) -> None:
        self.deadline = None
        seconds = self.settings.header_timeout_s
        if self.flow.read_paused:  # the server stopped reading (pipelining): not the client's delay
            self._arm(seconds, self._headers_late)
        elif not self.reading:  # nothing of a request arrived: nobody to answer
            self.transport.close()
        elif self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # an earlier request is being answered: close after it
        else:
            self._answer(RequestTimeout(f"the request's headers took longer than {seconds:g} s"))

    def _body_late(self) -> None:
        self.deadline = None
        seconds = self.settings.body_timeout_s
        cycle = self.cycle
        if self.flow.read_paused:  # the server stopped reading (a full buffer, pipelining)
            self._arm(seconds, self._body_late)
        elif cycle.response_started:  # answered already (or answering): nothing more to say
            self.transport.close()
        else:
            # The app stops waiting for the body; whatever it answers is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
            self._answer(RequestTimeout(f"the request's body took longer than {seconds:g} s"))

    def _answer(self, error: GradiagError) -> None:
        """Write the error's problem document and close: the request was never whole, so it
        never reached the app."""
        request_id = accepted_id(getattr(self, "headers", None) or [])
        with logs.bound(request_id):
            response = render(error)
        headers = [*self.server_state.default_headers, *response.raw_headers]
        headers += [(b"connection", b"close"), (HEADER, request_id.encode())]
        head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        self.transport.write(STATUS_LINE[response.status_code] + head + b"\r\n" + response.body)
        self.transport.close()
        self.logger.info("%s - %d %s: %s", self._peer(), error.status, error.code, error.detail)

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "-"

    async def _refuse(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        error = TooManyConnections(
            f"this process holds its limit of {self.settings.max_connections} connections",
            headers={"Retry-After": "1", "Connection": "close"},
        )
        self.logger.warning("%s - 503 overloaded: %s", self._peer(), error.detail)
        request_id = accepted_id(list(cast(dict[str, Any], scope).get("headers", [])))
        error.headers["X-Request-ID"] = request_id
        with logs.bound(request_id):
            response = render(error)
        await response(
            cast(dict[str, Any], scope), cast(StarletteReceive, receive), cast(StarletteSend, send)
        )


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining on the first SIGTERM or SIGINT: /readyz answers 503 for
    GRADIAG_DRAIN_S while requests are still served, then uvicorn's graceful shutdown (the
    listener closes, requests in flight finish) and exit 0. A second signal ends the drain;
    SIGINT during the shutdown ends it at once (uvicorn's rule)."""

    def __init__(self, config: ServeConfig) -> None:
        super().__init__(config)
        self.drain_s = config.settings.drain_s
        self.lifecycle = Lifecycle()
        self.drain_until: float | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # Requests find it in their state: the ASGI lifespan state is copied into each.
        self.lifespan.state["lifecycle"] = self.lifecycle
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded for uvicorn to raise again after the shutdown: a drained stop exits 0.
        if self.should_exit:
            self.force_exit = self.force_exit or sig == signal.SIGINT
        elif self.drain_until is None and self.drain_s > 0 and self.started:
            self.drain_until = time.monotonic() + self.drain_s
        else:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.drain_until is not None:
            if not self.lifecycle.draining:  # logged here: a signal handler should not log
                self.lifecycle.draining = True
                logger.info("Draining for %g s: /readyz answers 503", self.drain_s)
            if time.monotonic() >= self.drain_until:
                self.should_exit = True
        return await super().on_tick(counter)


class _DrainingProcess(Process):
    """One of uvicorn's worker processes, serving with a DrainingServer."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(cast(ServeConfig, self.config))
        return self._server


class _Supervisor(Multiprocess):
    """uvicorn's supervisor of worker processes (uvicorn 0.54, pinned), whose methods that
    start a process are repeated here to start a _DrainingProcess: the same bodies. On
    SIGTERM it sends each worker SIGTERM, and each drains, and waits for them."""

    def init_processes(self) -> None:
        for _ in range(self.processes_num):
            process = _DrainingProcess(self.config, self.sockets)
            process.start()
            self.processes.append(process)

    def restart_all(self) -> None:
        for idx, old_process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new_process = _DrainingProcess(self.config, self.sockets)
            new_process.start()
            if not new_process.wait_until_ready(
                self.config.timeout_worker_healthcheck, self.should_exit
            ):
                new_process.kill()
                new_process.join()
                if not self.should_exit.is_set():
                    logger.error(
                        f"New child process [{new_process.pid}] was not ready in time; "
                        f"keeping worker [{old_process.pid}] and aborting the restart."
                    )
                return
            old_process.terminate()
            old_process.join()
            self.processes[idx] = new_process

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                logger.error(
                    f"Child process [{process.pid}] failed to start, stopping the parent process."
                )
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logger.info(f"Child process [{process.pid}] died")
            process = _DrainingProcess(self.config, self.sockets)
            process.start()
            self.processes[idx] = process

    def handle_ttin(self) -> None:
        logger.info("Received SIGTTIN, increasing the number of processes.")
        self.processes_num += 1
        process = _DrainingProcess(self.config, self.sockets)
        process.start()
        self.processes.append(process)


def serve(config: ServeConfig) -> None:
    """Run the server: in this process, or in `config.workers` processes sharing a socket."""
    if config.workers > 1:
        _Supervisor(config, sockets=[config.bind_socket()]).run()
        return
    server = DrainingServer(config)
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
