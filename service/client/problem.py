"""The one exception of the client: an error answer of the service, as its problem document."""

from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import ValidationError

from service.api.problems import ProblemFieldError
from service.client.retry import retry_after_s


class GradiagProblem(Exception):
    """An RFC 9457 problem: an error the service answered (`application/problem+json`), a
    failed job's `error`, or a call that could not give what it asked for (`status` None).
    `document` is the problem as received, extensions (such as a 504's `job`) included;
    `attempts` counts the tries of the call, retries included."""

    def __init__(
        self,
        document: Mapping[str, Any],
        *,
        status: int | None = None,
        attempts: int = 1,
        retry_after: float | None = None,
    ) -> None:
        self.document = dict(document)
        given = document.get("status")
        self.status = given if isinstance(given, int) and not isinstance(given, bool) else status
        self.code = _text(document, "code") or "error"
        self.title = _text(document, "title") or "Error"
        self.detail = _text(document, "detail") or ""
        self.errors = _field_errors(document.get("errors"))
        self.request_id = _text(document, "request_id")
        self.attempts = attempts
        self.retry_after = retry_after
        super().__init__(str(self))

    def __str__(self) -> str:
        status = f"{self.status} " if self.status is not None else ""
        return f"{self.title} ({status}{self.code}): {self.detail}"

    @classmethod
    def of_response(cls, response: httpx.Response, attempts: int = 1) -> "GradiagProblem":
        """The problem an error answer holds; one made of its status and text where the
        answer is not a problem document (a proxy's page, say)."""
        try:
            document = response.json()
        except ValueError:
            document = None
        if not isinstance(document, dict) or "title" not in document:
            document = {
                "type": "about:blank",
                "title": response.reason_phrase or "HTTP error",
                "status": response.status_code,
                "detail": response.text[:500],
                "code": "http_error",
                "errors": [],
            }
        retry_after = retry_after_s(response.headers.get("retry-after"))
        return cls(
            document, status=response.status_code, attempts=attempts, retry_after=retry_after
        )


def _text(document: Mapping[str, Any], key: str) -> str | None:
    value = document.get(key)
    return value if isinstance(value, str) else None


def _field_errors(raw: object) -> list[ProblemFieldError]:
    """The located field errors; an entry that is not one is left out."""
    found = []
    for entry in raw if isinstance(raw, list) else []:
        try:
            found.append(ProblemFieldError.model_validate(entry))
        except ValidationError:
            continue
    return found
