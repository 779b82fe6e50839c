"""RFC 9457 problem details: one renderer for every error the service answers."""

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from service import logs
from service.api import examples
from service.architectures.registry import TAG_VALUES
from service.errors import GradiagError, bounded, pydantic_field_errors

PROBLEM_MEDIA_TYPE = "application/problem+json"

_HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "overloaded",
    503: "not_ready",
    504: "timeout",
}


class ProblemFieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An error: `code` is stable and machine-readable; `errors` locate bad fields."""

    # One documented example, a real answer, shared by every error response.
    model_config = ConfigDict(
        extra="allow", json_schema_extra={"examples": [examples.load("problem_shape_mismatch")]}
    )

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[ProblemFieldError]
    request_id: str | None = Field(
        None, description="the request's `X-Request-ID`, as echoed: quote it in reports"
    )


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = {
        "type": f"urn:gradiag:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "errors": errors or [],
        **(extra or {}),
    }
    return problem_response(body, headers)


def render(error: GradiagError) -> Response:
    return problem_response(error.problem(), error.headers)


def problem_response(document: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """A problem document as sent: its status, the problem+json media type, and the id of
    the request it answers (every problem body goes through here)."""
    status = int(document["status"])
    document = bounded(document)
    request_id = logs.request_id()
    if request_id is not None:
        document = {**document, "request_id": request_id}
    return Response(orjson.dumps(document), status, headers, media_type=PROBLEM_MEDIA_TYPE)


def validation_problem(raw_errors: Any, body: Any = None) -> Response:
    """422 for pydantic errors; written so that it cannot fail on any error content."""
    try:
        # FastAPI's locations start with "body": walk them from a document that has one.
        found = pydantic_field_errors(raw_errors, {"body": body}, tag_values=TAG_VALUES)
        errors = [e.as_dict() for e in found]
    except Exception:  # a malformed error list must still give a clean answer
        errors = []
    first = errors[0] if errors else None
    detail = f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else "invalid request"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    return problem(422, "invalid_request", "Invalid request", detail, errors)


async def _gradiag_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GradiagError)
    return render(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return validation_problem(exc.errors(), exc.body)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "internal" if exc.status_code >= 500 else "error")
    title = str(exc.detail) if isinstance(exc.detail, str) else "HTTP error"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:  # Starlette names the first route's methods only
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return problem(exc.status_code, code, title, title, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method of every route whose path matches the request's."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def internal_error() -> Response:
    """The answer to an unexpected exception: nothing of it is told (see request_context)."""
    return problem(500, "internal", "Internal error", "an unexpected error occurred")


def install(app: FastAPI) -> None:
    """Route every error through `problem()`; any other exception is answered by
    `request_context.RequestContextMiddleware`."""
    app.add_exception_handler(GradiagError, _gradiag_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: each status documented with the Problem schema."""
    descriptions = {
        400: "Malformed JSON",
        401: "Missing or unknown API key (`unauthorized`), where keys are configured",
        404: "No such job for this key (`not_found`)",
        406: "`Accept` admits none of JSON, SVG and PNG (`not_acceptable`)",
        409: "Idempotency-Key used with another body (`idempotency_conflict`)",
        413: "Body too large (`body_too_large`)",
        415: "Body is not `application/json` (`unsupported_media_type`)",
        422: "Invalid request, tensor, shapes, device or budget (see `code`)",
        429: "Queue full (`overloaded`); see `Retry-After`",
        500: "Unexpected error (`internal`)",
        503: "Not ready (`not_ready`), or the job store unreachable; see `Retry-After`",
        504: "No answer within the request's deadline (`timeout`); the job goes on at `job`",
    }
    return {s: {"model": Problem, "description": descriptions[s]} for s in statuses}
