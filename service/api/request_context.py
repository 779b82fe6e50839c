"""The outermost middleware: each request's id, its access log line, and the answer to any
exception nothing else answered.

Starlette's own catch-all (`ServerErrorMiddleware`) re-raises after answering, and uvicorn
then logs the traceback a second time and drops the keep-alive connection without
`Connection: close`; here the exception ends as a 500 problem, logged once, and the
connection stays usable.
"""

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import logs
from service.api.problems import internal_error

logger = logging.getLogger("gradiag")
access_logger = logging.getLogger("gradiag.access")

HEADER = b"x-request-id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def accepted_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's `X-Request-ID` where it is sane (at most 128 of `A-Za-z0-9._:-`), else a
    fresh one: an id is echoed into headers and logs, never arbitrary bytes."""
    for name, value in headers:
        if name.lower() == HEADER:
            given = value.decode("latin-1")
            if _SANE_ID.fullmatch(given):
                return given
            break
    return uuid.uuid4().hex


class RequestContextMiddleware:
    """Binds the request's id (`service.logs`) while the app serves it, echoes it in
    `X-Request-ID`, answers an unhandled exception with a 500 problem, and, with
    `access_log`, logs one `gradiag.access` line per request."""

    def __init__(self, app: ASGIApp, access_log: bool) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = accepted_id(scope["headers"])
        started = time.perf_counter()
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (HEADER, request_id.encode())]
            await send(message)

        with logs.bound(request_id) as context:
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
                if status is None:
                    await internal_error()(scope, receive, send_with_id)
                # Otherwise the response is cut short: returning without its end makes the
                # server close the connection, which is how a client learns of it.
            if self.access_log and context is not None:
                route = getattr(scope.get("route"), "path", None)
                fields = {
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    "model_kind": None,
                    "device": None,
                    **context.fields,
                }
                access_logger.info("request", extra={"fields": fields})
