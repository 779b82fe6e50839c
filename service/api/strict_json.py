"""Strict request bodies: JSON media type, a size limit, gzip, and RFC 8259 JSON only.

Python's `json` (FastAPI's default) accepts NaN, Infinity and 1e999; orjson refuses all of
them and bounds nesting, so a body that parses here holds only finite numbers.
"""

import asyncio
import time
import zlib
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

# Bodies past this are parsed on a thread (orjson lets the event loop run meanwhile).
LARGE_BODY_BYTES = 1 << 16


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
        self.state.large = len(body) > LARGE_BODY_BYTES
        self._parsed = await asyncio.to_thread(_parse, body) if self.state.large else _parse(body)

    async def json(self) -> Any:
        return self._parsed


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(
            f"not valid JSON: {exc.msg} at byte {exc.pos}",
            errors=[FieldError(("body", exc.pos), exc.msg, "json_invalid")],
        ) from None


class StrictJSONRoute(APIRoute):
    """Routes with a body parse it with `StrictJSONRequest` (FastAPI's documented hook for a
    custom request class); everything else, binding included, is FastAPI's own."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def strict_handler(request: Request) -> Response:
            request.state.arrived = time.monotonic()  # the deadline counts from here
            strict = StrictJSONRequest(request.scope, request.receive)
            await strict.load()
            return await handler(strict)

        return strict_handler


class BodyLimitMiddleware:
    """413 for a body over the limit: declared, grown while read (chunked), or inflated past
    it. A gzip body reaches the app decompressed, without its Content-Encoding."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        try:
            inflater = _inflater(headers.get(b"content-encoding", b"identity"))
            declared = headers.get(b"content-length")
            if declared is not None and not declared.isdigit():
                raise InvalidJSON("Content-Length is not a number")
            if declared is not None and int(declared) > self.max_bytes:
                raise self._too_large()
        except (InvalidJSON, BodyTooLarge, UnsupportedMediaType) as error:
            await render(error)(scope, receive, send)
            return
        if inflater is not None:
            dropped = (b"content-encoding", b"content-length")
            scope = {**scope, "headers": [h for h in scope["headers"] if h[0] not in dropped]}
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                if inflater is not None:
                    more = message.get("more_body", False)
                    body = self._inflate(inflater, body, self.max_bytes - received, more)
                    message = {**message, "body": body}
                received += len(body)
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)

    def _inflate(self, inflater: Any, chunk: bytes, room: int, more: bool) -> bytes:
        """Decompress a chunk, never past `room` + 1 bytes (a zip bomb stops there)."""
        try:
            body = inflater.decompress(chunk, max(room, 0) + 1)
        except zlib.error as exc:
            raise InvalidJSON(f"not a valid gzip body: {exc}") from None
        if inflater.unconsumed_tail or len(body) > room:
            raise BodyTooLarge(f"the gzip body inflates past {self.max_bytes} bytes")
        if not more and not inflater.eof:
            raise InvalidJSON("the gzip body ends before its stream does")
        if inflater.unused_data:
            raise InvalidJSON("data after the end of the gzip stream")
        return bytes(body)

    def _too_large(self) -> BodyTooLarge:
        return BodyTooLarge(f"the body exceeds {self.max_bytes} bytes")


def _inflater(encoding: bytes) -> Any:
    """A gzip decompressor for `Content-Encoding: gzip`, None for identity; 415 otherwise."""
    name = encoding.strip().lower()
    if name in (b"", b"identity"):
        return None
    if name in (b"gzip", b"x-gzip"):
        return zlib.decompressobj(wbits=31)
    shown = name[:40].decode("latin-1")
    raise UnsupportedMediaType(f"Content-Encoding '{shown}' is not supported: use gzip or none")
