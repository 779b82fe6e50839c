"""The one error hierarchy of the service.

Domain and execution code raise these; the transport renders each as an RFC 9457
`application/problem+json` response. Nothing here knows about HTTP frameworks: `status`
is the HTTP status the transport will use, `code` the stable machine-readable name.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

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

    @classmethod
    def at(cls, loc: Loc, msg: str, **kwargs: Any) -> "GradiagError":
        """An error about one field: `detail` and the single field error say the same thing."""
        return cls(msg, errors=[FieldError(loc, msg, cls.code)], **kwargs)


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


class UnsupportedDevice(GradiagError):
    code, status, title = "unsupported_device", 422, "Device not allowed"


class BodyTooLarge(GradiagError):
    code, status, title = "body_too_large", 413, "Request body too large"


class UnsupportedMediaType(GradiagError):
    code, status, title = "unsupported_media_type", 415, "Unsupported media type"


class Overloaded(GradiagError):
    code, status, title = "overloaded", 429, "Too many requests in flight"


class Timeout(GradiagError):
    code, status, title = "timeout", 504, "Deadline exceeded"


class NotReady(GradiagError):
    code, status, title = "not_ready", 503, "Service not ready"


class Cancelled(Exception):
    """A run stopped early because its client left or its deadline passed."""


class ClientClosed(GradiagError):
    code, status, title = "client_closed", 499, "Client closed the request"
