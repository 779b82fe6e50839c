"""When a call is tried again: refused for now (429 overloaded, 503 not ready) or not
connected, within a bounded number of tries and seconds of waiting."""

import email.utils
import logging
import time
from dataclasses import dataclass

import httpx

logger = logging.getLogger(__name__)

RETRIED_STATUSES = frozenset({429, 503})
# Methods whose request may be sent again after it may have reached the server. Any
# method is retried when the connection was never made (nothing was sent).
IDEMPOTENT = frozenset({"GET", "HEAD", "DELETE"})


@dataclass(frozen=True)
class Retry:
    """The retry policy of a client. A refused request was not run, so any call is retried;
    a wait is the answer's `Retry-After`, else `backoff_s` doubling from try to try."""

    attempts: int = 4  # tries of one call in all, the first included
    budget_s: float = 60.0  # seconds of waiting of one call in all: past it, the error
    max_wait_s: float = 20.0  # one wait at most (a longer Retry-After is cut to this)
    backoff_s: float = 0.5


DEFAULT_RETRY = Retry()


def retry_after_s(value: str | None) -> float | None:
    """`Retry-After` in seconds: a number of seconds, or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Attempts:
    """The tries of one call: each failure asks how long to wait, or None to give up."""

    def __init__(self, policy: Retry, method: str, path: str) -> None:
        self.policy = policy
        self.method = method
        self.path = path
        self.count = 0
        self.waited_s = 0.0

    def start(self) -> None:
        self.count += 1

    def after_response(self, response: httpx.Response) -> float | None:
        if response.status_code not in RETRIED_STATUSES:
            return None
        asked = retry_after_s(response.headers.get("retry-after"))
        return self._wait(asked, f"{response.status_code}")

    def after_error(self, error: httpx.TransportError) -> float | None:
        if not isinstance(error, httpx.ConnectError) and self.method not in IDEMPOTENT:
            return None
        return self._wait(None, type(error).__name__)

    def _wait(self, asked: float | None, why: str) -> float | None:
        policy = self.policy
        if self.count >= policy.attempts:
            return None
        default = policy.backoff_s * 2 ** (self.count - 1)
        wait = min(asked if asked is not None else default, policy.max_wait_s)
        if self.waited_s + wait > policy.budget_s:
            return None
        self.waited_s += wait
        logger.info(
            "%s %s: %s; try %d of %d in %.3g s",
            self.method,
            self.path,
            why,
            self.count + 1,
            policy.attempts,
            wait,
        )
        return wait
