"""Strict request bodies: JSON media type, a size limit, and RFC 8259 JSON only.

Python's `json` (FastAPI's default) accepts NaN, Infinity and 1e999; orjson refuses all of
them and bounds nesting, so a body that parses here holds only finite numbers.
"""

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import render
from service.errors import (
    BodyTooLarge,
    ClientClosed,
    FieldError,
    InvalidJSON,
    UnsupportedMediaType,
)


def _is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class StrictJSONRequest(Request):
    """A request whose JSON body is read and parsed strictly, once, by `load`; FastAPI's
    handler then gets the parsed document from `json()` and binds arguments as usual."""

    _parsed: Any = None

    async def load(self) -> None:
        if not _is_json(self.headers.get("content-type", "")):
            raise UnsupportedMediaType("the body must be application/json")
        try:
            body = await self.body()
        except ClientDisconnect:  # gone mid-body, or cut off by the body deadline: no traceback
            raise ClientClosed("the client disconnected before sending its body") from None
        if not body:
            raise InvalidJSON.at(("body",), "a JSON body is required")
        try:
            self._parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidJSON(
                f"not valid JSON: {exc.msg} at byte {exc.pos}",
                errors=[FieldError(("body", exc.pos), exc.msg, "json_invalid")],
            ) from None

    async def json(self) -> Any:
        return self._parsed


class StrictJSONRoute(APIRoute):
    """Routes with a body parse it with `StrictJSONRequest` (FastAPI's documented hook for a
    custom request class); everything else, binding included, is FastAPI's own."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def strict_handler(request: Request) -> Response:
            strict = StrictJSONRequest(request.scope, request.receive)
            await strict.load()
            return await handler(strict)

        return strict_handler


class BodyLimitMiddleware:
    """413 for a declared Content-Length over the limit, and for a chunked body that grows
    past it while being read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                response = render(InvalidJSON("Content-Length is not a number"))
                await response(scope, receive, send)
                return
            if int(declared) > self.max_bytes:
                await render(self._too_large())(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self) -> BodyTooLarge:
        return BodyTooLarge(f"the body exceeds {self.max_bytes} bytes")
