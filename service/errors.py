"""The one error hierarchy of the service.

Domain and execution code raise these; the transport renders each as an RFC 9457
`application/problem+json` response. Nothing here knows about HTTP frameworks: `status`
is the HTTP status the transport will use, `code` the stable machine-readable name.
"""

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from service.text import shorten

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class FieldError:
    """One problem with one field, located by its path in the request."""

    loc: Loc
    msg: str
    type: str = "value_error"

    def as_dict(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type}


class GradiagError(Exception):
    """Base class: a client-facing error with a stable `code`."""

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        errors: Sequence[FieldError] = (),
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors)
        self.extra = extra or {}
        self.headers = headers or {}

    def problem(self) -> dict[str, Any]:
        """The RFC 9457 problem document, plain JSON: what a response or a failed job holds."""
        document = {
            "type": f"urn:gradiag:problem:{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
            "errors": [e.as_dict() for e in self.errors],
            **_json_safe(self.extra),
        }
        return bounded(document)

    @classmethod
    def at(cls, loc: Loc, msg: str, **kwargs: Any) -> Self:
        """An error about one field: `detail` and the single field error say the same thing."""
        return cls(msg, errors=[FieldError(loc, msg, cls.code)], **kwargs)


_INT64 = 2**63

# A problem echoes at most this much of what the client sent (a key, a value in a message).
MAX_DETAIL_CHARS, MAX_MSG_CHARS, MAX_KEY_CHARS, MAX_ERRORS = 2000, 2000, 64, 50
MAX_LOC_PARTS = 32  # a location deeper than this keeps its first 8 and last 23 parts


def _short_loc(loc: list[Any]) -> list[Any]:
    parts = [shorten(p, MAX_KEY_CHARS) if isinstance(p, str) else p for p in loc]
    return parts if len(parts) <= MAX_LOC_PARTS else [*parts[:8], "…", *parts[-23:]]


def bounded(document: dict[str, Any]) -> dict[str, Any]:
    """A problem document whose text fields are short prefixes of anything long: an unknown
    key of five million characters must not come back twice in a 10 MB answer."""
    errors = document.get("errors") or []
    kept = [
        {
            **error,
            "loc": _short_loc(error.get("loc", [])),
            "msg": shorten(str(error.get("msg", "")), MAX_MSG_CHARS),
        }
        for error in errors[:MAX_ERRORS]
    ]
    extra = {"errors_omitted": len(errors) - MAX_ERRORS} if len(errors) > MAX_ERRORS else {}
    detail = shorten(str(document.get("detail", "")), MAX_DETAIL_CHARS)
    return {**document, "detail": detail, "errors": kept, **extra}


def _json_safe(value: Any) -> Any:
    """Integers past 64 bits (a budget estimate can be any size) as JSON numbers orjson can
    write: floats, or strings past a float's range."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
        try:
            return float(value)
        except OverflowError:
            return str(value)
    return value


class InvalidRequest(GradiagError):
    code, status, title = "invalid_request", 422, "Invalid request"


class InvalidJSON(GradiagError):
    code, status, title = "invalid_request", 400, "Malformed JSON body"


class InvalidTensor(GradiagError):
    code, status, title = "invalid_tensor", 422, "Invalid tensor"


class ShapeMismatch(GradiagError):
    code, status, title = "shape_mismatch", 422, "Shapes do not fit the architecture"


class BudgetExceeded(GradiagError):
    code, status, title = "budget_exceeded", 422, "Request exceeds the budget"


class PerSampleUndefined(GradiagError):
    """`per_sample` asked of a run whose samples are not independent (one sample, batch norm
    in training mode): per-sample gradients are not defined there."""

    code, status, title = "per_sample_undefined", 422, "Per-sample gradients undefined"


class UnsupportedDevice(GradiagError):
    code, status, title = "unsupported_device", 422, "Device not allowed"


class BodyTooLarge(GradiagError):
    code, status, title = "body_too_large", 413, "Request body too large"


class UnsupportedMediaType(GradiagError):
    code, status, title = "unsupported_media_type", 415, "Unsupported media type"


class NotAcceptable(GradiagError):
    code, status, title = "not_acceptable", 406, "Not acceptable"


class Overloaded(GradiagError):
    code, status, title = "overloaded", 429, "Too many requests in flight"


class Timeout(GradiagError):
    code, status, title = "timeout", 504, "Deadline exceeded"

    @classmethod
    def job_deadline(cls, seconds: float) -> "Timeout":
        """A job that ran or waited past GRADIAG_JOB_TIMEOUT_S."""
        return cls(f"the job exceeded its deadline of {seconds:g} s")


class NotReady(GradiagError):
    code, status, title = "not_ready", 503, "Service not ready"


class TooManyConnections(GradiagError):
    code, status, title = "overloaded", 503, "Too many connections"


class RequestTimeout(GradiagError):
    code, status, title = "request_timeout", 408, "Request not received in time"


class WorkerLost(GradiagError):
    code, status, title = "worker_lost", 500, "Worker lost"


class Unauthorized(GradiagError):
    code, status, title = "unauthorized", 401, "Missing or unknown API key"


class JobNotFound(GradiagError):
    code, status, title = "not_found", 404, "No such job"


class IdempotencyConflict(GradiagError):
    code, status, title = "idempotency_conflict", 409, "Idempotency key reused"


class JobCancelled(GradiagError):
    code, status, title = "cancelled", 409, "Job cancelled"


class JobFailed(GradiagError):
    """A job's recorded problem, answered as it was recorded."""

    def __init__(self, document: dict[str, Any]):
        super().__init__(str(document.get("detail", "")))
        self.document = document

    def problem(self) -> dict[str, Any]:
        return self.document


class Cancelled(Exception):
    """A run stopped early because its client left or its deadline passed."""


def raise_if_cancelled(cancel: threading.Event | None) -> None:
    """The one cancellation point: builds, passes and hooks call it between steps."""
    if cancel is not None and cancel.is_set():
        raise Cancelled


class ClientClosed(GradiagError):
    code, status, title = "client_closed", 499, "Client closed the request"


# The discriminators of the request's unions, and what their values are called.
_TAG_FIELDS = {
    "kind": "model kind",
    "type": "layer type",
    "distribution": "distribution",
    "name": "loss",
    "scheme": "init scheme",
}
_PAYLOAD_TAGS = {"values": list, "generator": dict}


def json_path(loc: Sequence[str | int], document: Any) -> Loc:
    """A pydantic location as a path into the JSON document.

    Pydantic names the member of a discriminated union in its locations (`model.mlp.x`,
    `input.generator.normal.shape`); clients want the path of the field they sent
    (`model.x`). A part that is no key of the document but the value of its discriminator is
    such a name, and is dropped. Keys the document lacks (missing fields) are kept.
    """
    path: list[str | int] = []
    node = document
    for part in loc:
        if _has(node, part):
            node = node[part]
        elif _is_union_tag(node, part):
            continue
        else:
            node = None
        path.append(part)
    return tuple(path)


def _has(node: Any, part: str | int) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _is_union_tag(node: Any, part: str | int) -> bool:
    if isinstance(node, dict) and any(node.get(field) == part for field in _TAG_FIELDS):
        return True
    payload_type = _PAYLOAD_TAGS.get(part) if isinstance(part, str) else None
    return payload_type is not None and isinstance(node, payload_type)


def _node(document: Any, path: Loc) -> Any:
    node = document
    for part in path:
        node = node[part] if _has(node, part) else None
    return node


def _tag_message(raw: Any, field: str, node: Any, values: Sequence[str] | None) -> str:
    """A missing or unknown discriminator, said with the values it may take."""
    if values:
        choices = ", ".join(repr(value) for value in values)
    else:  # pydantic lists them (quoted) for an unknown tag only
        choices = str((raw.get("ctx") or {}).get("expected_tags", ""))
    one_of = f": one of {choices}" if choices else ""
    if not isinstance(node, dict) or field not in node:
        return f"`{field}` is required{one_of}"
    value = node[field]
    if isinstance(value, str):
        shown = repr(value) if len(value) <= 64 else f"`{field}`"  # never echo a huge value
        return f"{shown} is not a {_TAG_FIELDS.get(field, field)}{one_of}"
    return f"`{field}` must be a string{one_of}"


def pydantic_field_errors(
    raw_errors: Sequence[Any],
    document: Any,
    prefix: Loc = (),
    tag_values: Mapping[str, Sequence[str]] | None = None,
) -> list[FieldError]:
    """Pydantic's errors as FieldErrors located by JSON path, never echoing the input
    (it may be huge, or a NaN that JSON cannot carry).

    A missing or unknown discriminator (`kind`, a layer's `type`, a generator's
    `distribution`) is located at that field and listed with its values, `tag_values`."""
    errors = []
    for raw in raw_errors:
        loc = json_path(tuple(raw.get("loc", ())), document)
        msg = str(raw.get("msg", "invalid"))
        if raw.get("type") in ("union_tag_invalid", "union_tag_not_found"):
            field = str((raw.get("ctx") or {}).get("discriminator", "")).strip("'")
            values = (tag_values or {}).get(field)
            msg = _tag_message(raw, field, _node(document, loc), values)
            loc = (*loc, field)  # point at the discriminator field itself
        parts = tuple(part if isinstance(part, int) else str(part) for part in (*prefix, *loc))
        errors.append(FieldError(parts, msg, str(raw.get("type", ""))))
    return errors
