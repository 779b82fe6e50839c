"""The app factory: settings, lifespan (worker start/stop), routers, errors, docs."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

import service
from service.api import docs, problems
from service.api.deps import AppState
from service.api.routes import diagnostics, meta, sweeps
from service.api.strict_json import BodyLimitMiddleware
from service.config import Settings, get_settings
from service.workers.devices import DevicePolicy
from service.workers.inprocess import InProcessWorker
from service.workers.memory import freeze_startup_objects, limit_malloc_arenas
from service.workers.runner import Runner

DESCRIPTION = """\
Post a neural-network architecture as JSON (no code) with an input and a target; the
service builds the PyTorch model, runs one forward and one backward pass, and answers with
per-layer gradient statistics, a vanishing / exploding verdict and the provenance needed to
trust the numbers. Errors are `application/problem+json` with a stable `code`.
"""


def _configure_torch(settings: Settings) -> None:
    if settings.deterministic:
        # cuBLAS needs a fixed workspace for deterministic results; harmless on the CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(settings.deterministic)


def _problem_content_types(schema: dict[str, Any]) -> dict[str, Any]:
    """Document error bodies under application/problem+json, the type they are sent with."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status[0] in "45" and "application/json" in content:
                    content[problems.PROBLEM_MEDIA_TYPE] = content.pop("application/json")
    return schema


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI app; `settings` defaults to the environment's."""
    settings = settings or get_settings()
    # Before the worker threads exist: threads created later share the arenas.
    limit_malloc_arenas(settings.malloc_arenas)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[AppState]:
        devices = DevicePolicy.from_settings(settings)
        _configure_torch(settings)
        worker = InProcessWorker(
            concurrency=settings.concurrency,
            queue_capacity=settings.queue_capacity,
            torch_threads=settings.torch_threads,
            cache_bytes=settings.model_cache_bytes,
            fused_statistics=settings.fused_statistics,
        )
        await worker.start()
        if settings.gc_freeze:  # what start-up made lives as long as the process
            freeze_startup_objects()
        try:
            yield {"runner": Runner(settings, devices, worker)}
        finally:
            await worker.stop()

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
    app.include_router(diagnostics.router)
    app.include_router(sweeps.router)
    app.include_router(meta.router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["content-type"],
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _problem_content_types(default_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
