"""Strict request bodies: JSON media type, a size limit, and RFC 8259 JSON only.

Python's `json` (FastAPI's default) accepts NaN, Infinity and 1e999; orjson refuses all of
them and bounds nesting, so a body that parses here holds only finite numbers.
"""

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, get_args, get_origin, get_type_hints

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import render
from service.errors import BodyTooLarge, FieldError, InvalidJSON, UnsupportedMediaType


def _is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class StrictJSONRequest(Request):
    """A request whose body was read and parsed strictly before the endpoint runs."""

    parsed: Any = None

    async def load(self) -> None:
        if not _is_json(self.headers.get("content-type", "")):
            raise UnsupportedMediaType("the body must be application/json")
        body = await self.body()
        if not body:
            raise InvalidJSON.at(("body",), "a JSON body is required")
        try:
            self.parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidJSON(
                f"not valid JSON: {exc.msg} at byte {exc.pos}",
                errors=[FieldError(("body", exc.pos), exc.msg, "json_invalid")],
            ) from None


Binder = Callable[[StrictJSONRequest], Awaitable[Any]]


def _binder(hint: Any) -> Binder | None:
    """How to obtain one endpoint argument from the request, for the kinds our routes use:
    the request, the body model, and `async def dep(request)` dependencies."""
    if hint is Request:

        async def the_request(request: StrictJSONRequest) -> Any:
            return request

        return the_request
    if isinstance(hint, type) and issubclass(hint, BaseModel):

        async def the_body(request: StrictJSONRequest) -> Any:
            try:
                return hint.model_validate(request.parsed)
            except ValidationError as exc:
                errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
                raise RequestValidationError(errors, body=request.parsed) from None

        return the_body
    if get_origin(hint) is Annotated:
        marks = [m for m in get_args(hint)[1:] if isinstance(m, Depends)]
        dependency = marks[0].dependency if len(marks) == 1 else None
        if inspect.iscoroutinefunction(dependency):
            params = list(inspect.signature(dependency).parameters.values())
            if len(params) == 1 and get_type_hints(dependency).get(params[0].name) is Request:
                return dependency
    return None


def direct_handler(
    endpoint: Callable[..., Coroutine[Any, Any, Response]],
) -> Callable[[Request], Coroutine[Any, Any, Response]] | None:
    """A handler that binds the endpoint's arguments itself, or None where it cannot.

    FastAPI's generic handler solves the dependency graph, parses the content type with
    `email.message` and validates through its field wrappers on every request: about as
    much work as running the lesson's model (py-spy). For endpoints made of the parts
    `_binder` knows, binding them directly gives the same arguments and the same errors.
    """
    if not inspect.iscoroutinefunction(endpoint):
        return None
    hints = get_type_hints(endpoint, include_extras=True)
    names = list(inspect.signature(endpoint).parameters)
    binders = [_binder(hints.get(name)) for name in names]
    if any(b is None for b in binders):
        return None
    bound = list(zip(names, binders, strict=True))

    async def handler(request: Request) -> Response:
        strict = StrictJSONRequest(request.scope, request.receive)
        await strict.load()
        return await endpoint(**{name: await bind(strict) for name, bind in bound})

    return handler


class StrictJSONRoute(APIRoute):
    """Routes with a body parse it with `StrictJSONRequest` and bind their arguments without
    FastAPI's generic handler (the OpenAPI description is unchanged: it comes from the same
    signature); routes without a body run unchanged."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        if self.body_field is None:
            return super().get_route_handler()
        direct = direct_handler(self.endpoint)
        if direct is None:  # at start-up, not per request
            raise TypeError(f"{self.path}: arguments `direct_handler` cannot bind")
        return direct


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
