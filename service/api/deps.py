"""Dependencies: typed access to what the lifespan created, and who is asking."""

import hashlib
import hmac
from concurrent.futures import Executor
from typing import Annotated, TypedDict

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry

from service.errors import Unauthorized
from service.lifecycle import Lifecycle
from service.run_service import RunService


class AppState(TypedDict):
    """Long-lived resources, created in the lifespan and handed to each request. The
    settings travel with the service layer (`runs.settings`)."""

    runs: RunService
    registry: CollectorRegistry  # the app's own metrics (requests)
    charts: Executor  # one thread: matplotlib draws one chart at a time anyway


# `async def` on purpose: FastAPI runs plain `def` dependencies in its threadpool, a thread
# hop per request for what is an attribute read.
async def get_run_service(request: Request) -> RunService:
    service: RunService = request.state.runs
    return service


RunServiceDep = Annotated[RunService, Depends(get_run_service)]


async def get_lifecycle(request: Request) -> Lifecycle | None:
    """The server's lifecycle, where the server provides one (see service/server.py)."""
    lifecycle: Lifecycle | None = getattr(request.state, "lifecycle", None)
    return lifecycle


LifecycleDep = Annotated[Lifecycle | None, Depends(get_lifecycle)]

_bearer = HTTPBearer(auto_error=False, description="one of GRADIAG_API_KEYS, where set")


def key_fingerprint(key: str) -> str:
    """What identifies a key's jobs: never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


async def get_owner(
    runs: RunServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The caller's key fingerprint; "" where the service is open (no keys configured)."""
    keys = runs.settings.api_keys
    if not keys:
        return ""
    given = credentials.credentials.encode() if credentials is not None else b""
    matched = None
    for key in keys:  # every key compared, in constant time each
        secret = key.get_secret_value()
        if hmac.compare_digest(given, secret.encode()):
            matched = secret
    if matched is None or not given:
        raise Unauthorized(
            "an API key is required: Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return key_fingerprint(matched)


OwnerDep = Annotated[str, Depends(get_owner)]
PreferHeader = Annotated[
    str | None,
    Header(description="`respond-async` (RFC 7240): answer 202 with the job instead of waiting"),
]
