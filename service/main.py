"""The app factory: settings, lifespan (backend start/stop), routers, errors, docs."""

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry

import service
from service.api import docs, metrics, problems
from service.api.deps import AppState
from service.api.metrics import RequestCounter
from service.api.request_context import RequestContextMiddleware
from service.api.routes import diagnostics, jobs, meta, playground, sweeps
from service.api.strict_json import BodyLimitMiddleware
from service.config import Settings, get_settings
from service.execution.backend import Backend
from service.execution.celery_backend import CeleryBackend
from service.execution.devices import DevicePolicy
from service.execution.inprocess import InProcessBackend
from service.run_service import RunService
from service.schemas.common import SEED_MAX

DESCRIPTION = """\
Post a neural-network architecture as JSON (no code) with an input and a target; the
service builds the PyTorch model, runs one forward and one backward pass, and answers with
per-layer gradient statistics, a vanishing / exploding verdict and the provenance needed to
trust the numbers. With `Accept: image/svg+xml` or `image/png` the same routes answer a
gradient-flow chart of the report. Errors are `application/problem+json` with a stable `code`.
"""


def _problem_content_types(schema: dict[str, Any]) -> dict[str, Any]:
    """Document error bodies under application/problem+json, the type they are sent with."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status[0] in "45" and "application/json" in content:
                    content[problems.PROBLEM_MEDIA_TYPE] = content.pop("application/json")
    return schema


_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _integer_bounds(node: Any) -> None:
    """FastAPI's OpenAPI model types every bound as a float; an integer field's bounds are
    integers again here, and the seeds' maximum 2**64 - 1, which no float holds, is exact."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in _BOUNDS:
                value = node.get(key)
                if isinstance(value, float) and value.is_integer():
                    exact = key == "maximum" and value == float(SEED_MAX)
                    node[key] = SEED_MAX if exact else int(value)
        for child in node.values():
            _integer_bounds(child)
    elif isinstance(node, list):
        for child in node:
            _integer_bounds(child)


def _optional_auth(schema: dict[str, Any]) -> dict[str, Any]:
    """Keys are a deployment's choice (GRADIAG_API_KEYS): the schema offers bearer auth and
    no auth as alternatives, whatever this server's settings."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if operation.get("security") and {} not in operation["security"]:
                operation["security"].append({})
    return schema


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI app; `settings` defaults to the environment's."""
    settings = settings or get_settings()
    registry = CollectorRegistry()  # this app's metrics: several apps can share a process

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[AppState]:
        local = settings.backend == "inprocess"
        devices = DevicePolicy.from_settings(settings, local=local)
        backend: Backend = InProcessBackend(settings) if local else CeleryBackend(settings)
        await backend.start()
        charts = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradiag-charts")
        try:
            runs = RunService(settings, devices, backend)
            yield {"runs": runs, "registry": registry, "charts": charts}
        finally:
            charts.shutdown(wait=False, cancel_futures=True)
            await backend.stop()

    app = FastAPI(
        title="gradiag",
        version=service.__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    problems.install(app)
    docs.install(app)
    app.include_router(playground.router)
    app.include_router(diagnostics.router)
    app.include_router(sweeps.router)
    app.include_router(jobs.router)
    app.include_router(meta.router)
    app.include_router(metrics.router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[
                "content-type",
                "authorization",
                "prefer",
                "idempotency-key",
                "x-request-id",
            ],
            expose_headers=["location", "retry-after", "preference-applied", "x-request-id"],
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestCounter, registry=registry)
    # Added last: outside every other middleware but Starlette's ServerErrorMiddleware,
    # which it leaves nothing to do.
    app.add_middleware(RequestContextMiddleware, access_log=settings.log_format == "json")

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _optional_auth(_problem_content_types(default_openapi()))
            _integer_bounds(app.openapi_schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
